"""The base models a deployment offers: `GET /v1/models` (the shape of OpenAI's model list)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from ftjobs.client.models.common import ListObject


class ModelObject(BaseModel):
    """A base model a job may start from; pass its `id` as a job's `model`."""

    id: str = Field(description="The name a job's `model` may use.")
    object: Literal["model"] = "model"
    created: int = Field(description="When the model's folder last changed (Unix seconds).")
    owned_by: str = Field(default="ftjobs", description="Who provides it: `ftjobs` for the deployment's models.")


class ModelList(ListObject[ModelObject]):
    """The base models under the deployment's model roots, by name."""
