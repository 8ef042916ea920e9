"""What a job leaves behind: weights, labels, metrics and a manifest, written locally then published.

Publishing is two-phase so a reader never sees a half-uploaded artifact and a stale attempt never
overwrites the current one: upload everything to the attempt's staging folder, check the attempt still
owns the job, move each file under `artifacts/` (a rename on a local filesystem), then the caller
records the artifact list with `Reporter.finish`.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ftjobs.client.models import Artifact, Task
from ftjobs.core.keys import artifact_path, staging_dir
from ftjobs.core.storage import Storage
from ftjobs.jobs.training.methods import save_weights

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):  # 1 MiB at a time: weights can be gigabytes
            digest.update(chunk)
    return digest.hexdigest()


def write_artifacts(
    out: Path,
    *,
    model: Any,
    tokenizer: Any,
    method: Any,
    task: Task,
    labels: Sequence[str] | None,
    metrics: dict[str, Any],
    job: dict[str, Any],
) -> list[Artifact]:
    """Write every artifact under `out`, manifest.json (name, bytes, sha256 of every other file) last."""
    out.mkdir(parents=True, exist_ok=True)
    # peft methods: adapter/ (+ the trained classifier head) for PeftModel.from_pretrained(base, "adapter/");
    # bottleneck adapters: adapter/ for jobs.training.adapters.load_bottleneck_adapter; full, or `merge`: a complete
    # model/. The tokenizer goes alongside each, chat template included.
    for folder in save_weights(model, method, out):
        tokenizer.save_pretrained(out / folder)
        if job.get("model"):
            name_the_base(out / folder, str(job["model"]))
    if task == Task.classification and labels:
        _write_json(out / "labels.json", {str(i): name for i, name in enumerate(labels)})
    _write_json(out / "metrics.json", metrics)

    names = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    described = [describe(out, name) for name in names]
    files = [a.model_dump(include={"name", "bytes", "sha256"}) for a in described]
    _write_json(out / MANIFEST, {**job, "files": files})
    return [*described, describe(out, MANIFEST)]


def name_the_base(folder: Path, shown: str) -> None:
    """peft writes the folder it loaded the base model from into adapter_config.json (and its README.md): a server
    path. Saved weights name the base model as the tenant may see it (`shown`), like the rest of the job."""
    config = folder / "adapter_config.json"
    if not config.is_file():
        return
    values = json.loads(config.read_text(encoding="utf-8"))
    loaded = values.get("base_model_name_or_path")
    if not isinstance(loaded, str) or not Path(loaded).is_absolute():
        return
    values = {k: shown if v == loaded else v for k, v in values.items()}  # also prompt tuning's tokenizer path
    config.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for card in folder.glob("*.md"):
        card.write_text(card.read_text(encoding="utf-8").replace(loaded, shown), encoding="utf-8")


def describe(root: Path, name: str) -> Artifact:
    path = root / name
    return Artifact(
        name=name, bytes=path.stat().st_size, sha256=sha256_file(path), created_at=int(time.time())
    )


def publish(
    store: Storage,
    local: Path,
    artifacts: Sequence[Artifact],
    tenant: str,
    job_id: str,
    attempt: int,
    still_current: Callable[[], bool],
    uploaded: Callable[[int], None] | None = None,
) -> list[Artifact] | None:
    """Upload to staging, then move into place; None (nothing moved) if the attempt lost the job meanwhile.
    `uploaded(bytes)` after each file: the saving phase's progress (jobs/evaluation/progress.py)."""
    staging = staging_dir(tenant, job_id, attempt)
    for a in artifacts:  # manifest last: its presence means every file it lists is there
        store.upload(local / a.name, f"{staging}/{a.name}")
        if uploaded is not None:
            uploaded(a.bytes)
    if not still_current():
        store.delete(staging)
        return None
    for a in artifacts:
        store.move(f"{staging}/{a.name}", artifact_path(tenant, job_id, a.name))
    store.delete(staging)
    return list(artifacts)


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
