"""What every resource shares: id patterns, the default tenant, strict request models, list envelopes, health."""

from __future__ import annotations

from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

DEFAULT_TENANT = "default"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
JOB_ID_PATTERN = r"^ftjob-[0-9a-f]{20}$"
FILE_ID_PATTERN = r"^file-[0-9a-f]{20}$"

# Request bodies reject unknown fields and NaN/inf: a typo is an error, not a silently ignored option.
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)

T = TypeVar("T")


class ListObject(BaseModel, Generic[T]):
    """A whole list: `{"object": "list", "data": [...]}` (a job's artifacts).

    Each list the API returns is a named subclass (`class JobList(Page[Job])`): one envelope, and schema names in
    the OpenAPI spec that read like the resource.
    """

    object: Literal["list"] = "list"
    data: list[T]


class Page(ListObject[T], Generic[T]):
    """One page of a longer list; pass `last_id` as `after` for the next page while `has_more`."""

    has_more: bool
    last_id: str | None = None


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    redis: bool | None = None
    version: str
