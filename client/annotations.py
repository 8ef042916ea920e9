"""Programmatic labeling (`/v1/annotations`), for both clients: labeling functions over an uploaded file's rows,
combined by a label model into a new file.

annotations = Annotations(client)                  # or AsyncAnnotations(async_client)
a = annotations.create(file_id, labels=["ham", "spam"], functions=[
    {"type": "keywords", "label": "spam", "keywords": ["prize", "win"]},
    {"type": "regex", "label": "spam", "pattern": r"\\b\\d{5}\\b"},
    {"type": "zero_shot", "descriptions": {"ham": "a chat between friends", "spam": "an advert"}},
])
a = annotations.wait(a.id)                         # succeeded (train on a.output_file_id) or failed
"""

from __future__ import annotations

import time
from typing import Any

from ftjobs.client import errors
from ftjobs.client.base import Plan, Sleep
from ftjobs.client.models.annotations import Annotation, AnnotationList, AnnotationStatus
from ftjobs.client.resources import Plans, _seg


class AnnotationFailed(errors.FtjobsError):
    """`wait(..., raise_on_failure=True)`: the annotation failed; `.annotation.error` says why."""

    def __init__(self, annotation: Annotation) -> None:
        self.annotation = annotation
        reason = annotation.error.message if annotation.error else "no reason recorded"
        super().__init__(f"annotation {annotation.id} failed: {reason}")


class AnnotationWaitTimeout(errors.FtjobsError):
    def __init__(self, annotation: Annotation, timeout: float) -> None:
        self.annotation = annotation
        super().__init__(f"annotation {annotation.id} still {annotation.status.value} after {timeout:g} s")


def done(annotation: Annotation) -> bool:
    """Failed, or succeeded with its output registered as a file."""
    if annotation.status is AnnotationStatus.failed:
        return True
    return annotation.status is AnnotationStatus.succeeded and annotation.output_file_id is not None


class AnnotationsPlans(Plans):
    def create(
        self, file_id: str, *, labels: list[str], functions: list[dict[str, Any]], **options: Any
    ) -> Plan[Annotation]:
        """Start an annotation (options: text_field, label_field, given_field, class_balance, epochs, seed ...)."""
        body = {"file_id": file_id, "labels": labels, "functions": functions}
        body.update({k: v for k, v in options.items() if v is not None})
        return (yield from self._core._post("/v1/annotations", Annotation, json=body))

    def list(self) -> Plan[AnnotationList]:
        return (yield from self._core._get("/v1/annotations", AnnotationList))

    def get(self, annotation_id: str) -> Plan[Annotation]:
        return (yield from self._core._get(f"/v1/annotations/{_seg(annotation_id)}", Annotation))

    def wait(
        self, annotation_id: str, *, timeout: float | None = None, poll_interval: float = 1.0,
        raise_on_failure: bool = False,
    ) -> Plan[Annotation]:  # fmt: skip
        """Poll until it failed or succeeded with its file; `AnnotationWaitTimeout` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            annotation = yield from self.get(annotation_id)
            if done(annotation):
                if raise_on_failure and annotation.status is AnnotationStatus.failed:
                    raise AnnotationFailed(annotation)
                return annotation
            delay = poll_interval
            if deadline is not None and timeout is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AnnotationWaitTimeout(annotation, timeout)
                delay = min(delay, remaining)
            yield Sleep(delay)


class Annotations:
    """Create, list, get and wait for annotations over a `Client`."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._plans = AnnotationsPlans(client)

    def create(self, file_id: str, *, labels: list[str], functions: list[dict[str, Any]], **options: Any) -> Annotation:
        annotation: Annotation = self._client._run(self._plans.create(file_id, labels=labels, functions=functions,
                                                                      **options))  # fmt: skip
        return annotation

    def list(self) -> AnnotationList:
        listed: AnnotationList = self._client._run(self._plans.list())
        return listed

    def get(self, annotation_id: str) -> Annotation:
        annotation: Annotation = self._client._run(self._plans.get(annotation_id))
        return annotation

    def wait(
        self, annotation_id: str, *, timeout: float | None = None, poll_interval: float = 1.0,
        raise_on_failure: bool = False,
    ) -> Annotation:  # fmt: skip
        plan = self._plans.wait(annotation_id, timeout=timeout, poll_interval=poll_interval,
                                raise_on_failure=raise_on_failure)  # fmt: skip
        annotation: Annotation = self._client._run(plan)
        return annotation


class AsyncAnnotations:
    """As `Annotations`, awaitable, over an `AsyncClient`."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self._plans = AnnotationsPlans(client)

    async def create(
        self, file_id: str, *, labels: list[str], functions: list[dict[str, Any]], **options: Any
    ) -> Annotation:
        plan = self._plans.create(file_id, labels=labels, functions=functions, **options)
        annotation: Annotation = await self._client._run(plan)
        return annotation

    async def list(self) -> AnnotationList:
        listed: AnnotationList = await self._client._run(self._plans.list())
        return listed

    async def get(self, annotation_id: str) -> Annotation:
        annotation: Annotation = await self._client._run(self._plans.get(annotation_id))
        return annotation

    async def wait(
        self, annotation_id: str, *, timeout: float | None = None, poll_interval: float = 1.0,
        raise_on_failure: bool = False,
    ) -> Annotation:  # fmt: skip
        plan = self._plans.wait(annotation_id, timeout=timeout, poll_interval=poll_interval,
                                raise_on_failure=raise_on_failure)  # fmt: skip
        annotation: Annotation = await self._client._run(plan)
        return annotation
