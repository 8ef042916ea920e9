"""Experiment trackers: TensorBoard on every job, W&B (offline) and MLflow when a job asks; their logs are artifacts.

    report_to = start(request.integrations, out, scratch, job_id=..., tenant=..., attempt=...)  # before the Trainer
    ... evaluate, train, evaluate: the Trainer's callbacks log to each tracker ...
    finish(out)    # end the runs and pack the W&B/MLflow stores into `out`, before the artifacts are written
    end(status)    # on every path (failed, cancelled): end what is still open; nothing left to do after finish

What ends up under `out` (and so in the job's artifacts):
- `tensorboard/events.out.tfevents.*`: transformers' TensorBoardCallback writes where TENSORBOARD_LOGGING_DIR says
  (transformers 5 has no `logging_dir` argument; without the variable it writes under `output_dir`, our scratch);
- `wandb.tar.gz`: `wandb/offline-run-<time>-<run id>/` (the `.wandb` transaction log, requirements.txt, debug logs);
  `tar xzf wandb.tar.gz && wandb sync wandb/offline-run-*` uploads it from a machine with network and an API key;
- `mlruns.tar.gz`: an MLflow file store, unless the worker's environment names a server in MLFLOW_TRACKING_URI
  (then the run lives there and nothing is packed). Read it with
  `MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri ./mlruns` (or `mlflow migrate-filestore`).
The two stores are packed as one file each: a tool reads them whole, the MLflow store holds a file per parameter
(~200), and W&B's folder has symlinks that a file-by-file upload would turn into copies or dangling names.

We open the W&B and MLflow runs ourselves, named after the job, and the callbacks log into them: transformers
never finishes a W&B run, and its MLflow callback ends the run when training ends, so the final evaluation
(`trainer.evaluate()` after `train()`) would start a second run. The environment variables set here live only in
RQ's forked work horse, one job per process.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ftjobs.client.models import JobStatus
from ftjobs.jobs.errors import IntegrationUnavailable

log = logging.getLogger("ftjobs.integrations")
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}
PACKED = ("wandb", "mlruns")  # tracker stores under `out` that become one `<name>.tar.gz` artifact each
PROJECT = "ftjobs"  # W&B project / MLflow experiment unless WANDB_PROJECT / MLFLOW_EXPERIMENT_NAME say otherwise
# MLflow's own tags of a run, set to ours: the OS user, the entry script's path and its type would be the server's.
SOURCE_TAGS = {"mlflow.user": "ftjobs", "mlflow.source.name": "ftjobs", "mlflow.source.type": "JOB"}
STRIPPED_TAGS = ("mlflow.source.git", "mlflow.gitRepoURL")
INIT_TIMEOUT_S = 60  # wandb.init gives up (raises) after this, rather than the default 90 s


def installed(name: str) -> bool:
    """The tracker's package is importable and the worker's environment has not switched it off."""
    if name == "mlflow" and os.environ.get("DISABLE_MLFLOW_INTEGRATION", "").upper() == "TRUE":
        return False  # transformers refuses MLflow then too
    if name == "wandb" and os.environ.get("WANDB_MODE") == "disabled":
        return False  # we would log offline regardless of WANDB_MODE: honour a deployment's "off" here
    return importlib.util.find_spec(PACKAGES[name]) is not None


def check(requested: Sequence[str]) -> None:
    """Fail the job (before any work) if a requested tracker is not installed in this worker."""
    missing = [name for name in requested if not installed(name)]
    if missing:
        raise IntegrationUnavailable(
            f"integrations {missing} requested but not installed in the worker "
            f"(pip install {' '.join(PACKAGES[m] for m in missing)}) or switched off there; "
            "remove them from `integrations`",
            param="integrations",
        )


def start(requested: Sequence[str], out: Path, scratch: Path, *, job_id: str, tenant: str, attempt: int) -> list[str]:
    """Point each tracker under `out` and open the W&B / MLflow runs; returns the Trainer's `report_to`."""
    names = list(dict.fromkeys([*requested, *(["tensorboard"] if installed("tensorboard") else [])]))
    labels = {"job_id": job_id, "tenant": tenant, "attempt": str(attempt)}
    if "tensorboard" in names:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tensorboard")
    if "wandb" in names:
        _start_wandb(out, scratch, labels)
    if "mlflow" in names:
        _start_mlflow(out, labels)
    return names


def finish(out: Path) -> None:
    """End the runs (everything is on disk afterwards), strip the server's details from what they wrote and pack
    the local tracker stores under `out`."""
    end(JobStatus.succeeded)
    _anonymous_event_files(out / "tensorboard")
    _relative_mlflow_locations(out)
    for name in PACKED:
        folder = out / name
        if folder.is_dir():
            with tarfile.open(out / f"{name}.tar.gz", "w:gz") as tar:
                tar.add(folder, arcname=name, filter=_no_links)
            shutil.rmtree(folder)


def end(status: JobStatus) -> None:
    """End the W&B and MLflow runs still open with the job's outcome; never raises (the job's outcome stands)."""
    wandb: Any = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        try:
            wandb.run.finish(exit_code=0 if status == JobStatus.succeeded else 1)
            wandb.teardown()  # wandb-core would exit with the work horse anyway; stop it now
        except Exception:
            log.exception("could not finish the W&B run")
    mlflow: Any = sys.modules.get("mlflow")
    if mlflow is not None and mlflow.active_run() is not None:
        outcome = {JobStatus.succeeded: "FINISHED", JobStatus.cancelled: "KILLED"}.get(status, "FAILED")
        try:
            mlflow.end_run(outcome)  # also drains the callback's asynchronous metric queue
        except Exception:  # e.g. the deployment's tracking server is down
            log.exception("could not end the MLflow run")


def _start_wandb(out: Path, scratch: Path, labels: dict[str, str]) -> None:
    os.environ.update(
        WANDB_ERROR_REPORTING="false",  # no Sentry reports from the SDK or wandb-core
        WANDB_CACHE_DIR=str(scratch / "wandb-cache"),  # wandb-core's own log and caches: not in $HOME, not artifacts
        WANDB_DATA_DIR=str(scratch / "wandb-data"),  # staging for W&B artifacts (WANDB_LOG_MODEL)
    )
    wandb = _import("wandb")
    wandb.init(
        mode="offline",  # no network from a worker, no API key: `wandb sync` the run folder later
        dir=str(out),  # -> out/wandb/offline-run-*/
        project=os.environ.get("WANDB_PROJECT") or PROJECT,
        name=labels["job_id"],
        group=labels["job_id"],  # the attempts of one job side by side
        id=f"{labels['job_id']}-{labels['attempt']}",  # a second `wandb sync` of the folder updates the same run
        config={"ftjobs": labels},
        settings=wandb.Settings(
            silent=True,  # nothing on the worker's terminal
            console="off",  # no capture of the work horse's stdout/stderr (output.log)
            disable_git=True,  # a remote URL can carry a token
            disable_code=True,
            save_code=False,
            x_disable_meta=True,  # no host/user/argv metadata
            host="ftjobs",  # the run record's host would be the worker's host name
            x_disable_machine_info=True,  # no cloud metadata probes
            x_disable_stats=True,  # no system-metrics sampler process (wandb-symon)
            init_timeout=INIT_TIMEOUT_S,
        ),
    )


def _start_mlflow(out: Path, labels: dict[str, str]) -> None:
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"  # mlflow 3 sends usage data (and waits ~1 s for it at end_run)
    mlflow = _import("mlflow")
    if not os.environ.get("MLFLOW_TRACKING_URI"):  # a deployment's server wins; otherwise a file store in `out`
        # mlflow 3 keeps the file store in maintenance mode behind this switch; mlflow-skinny has no sqlite store.
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        mlflow.set_tracking_uri((out / "mlruns").resolve().as_uri())  # (it also sets MLFLOW_TRACKING_URI)
    if not (os.environ.get("MLFLOW_EXPERIMENT_NAME") or os.environ.get("MLFLOW_EXPERIMENT_ID")):
        mlflow.set_experiment(PROJECT)
    # MLflow tags every run with the OS user, the entry script's path and the git commit of its folder: ours.
    tags = {**{f"ftjobs.{k}": v for k, v in labels.items()}, **SOURCE_TAGS}
    run = mlflow.start_run(run_name=labels["job_id"], tags=tags)
    client = mlflow.MlflowClient()
    for key in list(run.data.tags):
        if key.startswith(STRIPPED_TAGS):  # the server's git commit and repository, if the worker runs from one
            client.delete_tag(run.info.run_id, key)


def _anonymous_event_files(folder: Path) -> None:
    """TensorBoard names its files `events.out.tfevents.<time>.<host name>.<pid>.<n>`: keep the time, drop the
    host and process (TensorBoard reads any file whose name holds `tfevents`)."""
    if not folder.is_dir():
        return
    for n, path in enumerate(sorted(folder.rglob("*tfevents*"))):
        parts = path.name.split(".")
        stamp = parts[3] if len(parts) > 3 and parts[3].isdigit() else "0"
        path.rename(path.with_name(f"events.out.tfevents.{stamp}.ftjobs.{n}"))


def _relative_mlflow_locations(out: Path) -> None:
    """The file store records where it kept artifacts as `file:///<scratch>/out/mlruns/...`: a server path that
    is gone once the job ends. Relative (`mlruns/...`), they resolve where the archive is unpacked."""
    store = out / "mlruns"
    if not store.is_dir():
        return
    prefix = out.resolve().as_uri() + "/"
    for meta in store.rglob("meta.yaml"):
        text = meta.read_text(encoding="utf-8")
        if prefix in text or str(out.resolve()) in text:
            meta.write_text(text.replace(prefix, "").replace(str(out.resolve()) + "/", ""), encoding="utf-8")


def _import(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as e:  # found by check() but broken (a half-uninstalled package, a missing dependency)
        raise IntegrationUnavailable(
            f"integration {name!r} is installed in the worker but does not import: {e}", param="integrations"
        ) from None


def _no_links(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
    """W&B's `latest-run` and `debug*.log` links only repeat what the archive holds (or point outside it)."""
    return None if info.issym() or info.islnk() else info
