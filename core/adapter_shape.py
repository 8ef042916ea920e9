"""The adapter-shape rule of a continued job (`parent_job_id`), defined once for the API and the worker.

A child keeps its parent's adapter shape (`ADAPTER_SHAPE_FIELDS`: LoRA r/alpha/target modules/DoRA, virtual
tokens, bottleneck sizes ...). The API checks the request against the parent's recorded method
(`service/job_checks.py`); the worker checks again against the adapter config it downloaded
(`jobs/training/continuation.py`). Each names the conflict in its own error.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from ftjobs.client.models import ADAPTER_SHAPE_FIELDS

PEFT_DEFAULT_FIELDS = ("target_modules", "feedforward_modules")  # null: whatever peft picks for the architecture


class ShapeConflict(NamedTuple):
    """A shape setting the child names with another value than the parent's."""

    name: str
    wanted: Any
    trained: Any


def same_setting(a: object, b: object) -> bool:
    """Equal; module lists and adapter positions in any order (a saved config may hold them as a set)."""
    if isinstance(a, list | tuple | set) and isinstance(b, list | tuple | set):
        return sorted(map(str, a)) == sorted(map(str, b))
    return a == b


def shape_conflict(kind: str, wanted: Mapping[str, Any], trained: Mapping[str, Any]) -> ShapeConflict | None:
    """The first adapter-shaping setting of method `kind` that `wanted` names (absent or None: inherited) with a
    value other than `trained`'s; a module list the parent left null (peft's default) accepts any."""
    for name in ADAPTER_SHAPE_FIELDS.get(kind, ()):
        want, have = wanted.get(name), trained.get(name)
        if want is None or (have is None and name in PEFT_DEFAULT_FIELDS):
            continue
        if not same_setting(want, have):
            return ShapeConflict(name, want, have)
    return None
