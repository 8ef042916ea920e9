"""Experiment trackers end to end: TensorBoard on every job, W&B (offline) and MLflow when asked, read back."""

from __future__ import annotations

import json
import secrets
import tarfile
from pathlib import Path

import pytest

from ftjobs.client.models import Hyperparameters, JobCreate, LoraMethod
from ftjobs.core.keys import artifact_path
from ftjobs.jobs.errors import IntegrationUnavailable
from ftjobs.jobs.outputs.trackers import check
from tests.conftest import WorkerProcess
from tests.jobs.helpers import events, guarded_write, metric_points, store_root, submit, upload_rows, wait_for

ROWS = [{"prompt": f"count to {n} :", "completion": " ".join(str(i) for i in range(1, n + 1))} for n in range(1, 11)]


def request(env: dict[str, str], integrations: list[str], **hp: object) -> JobCreate:
    return JobCreate(
        model=env["MODEL"],
        training_file=upload_rows(env, ROWS * 2),
        method=LoraMethod(r=4, alpha=8),
        hyperparameters=Hyperparameters(
            **{"n_epochs": 1, "batch_size": 4, "max_seq_length": 32, "validation_split": 0.2, **hp}
        ),
        integrations=integrations,
        eval_generation_limit=0,
        eval_samples=0,
    )


@pytest.fixture
def secret() -> str:
    return f"sentinel-{secrets.token_hex(8)}"


@pytest.fixture(scope="session")
def mpl_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("matplotlib")  # the fresh $HOME's font cache, built once


@pytest.fixture
def tracked_env(
    env: dict[str, str], tiny_causal_lm: Path, tmp_path: Path, secret: str, mpl_config: Path
) -> dict[str, str]:
    """The worker's environment holds tracker credentials (that must never reach a job) and a fresh $HOME."""
    (tmp_path / "home").mkdir()
    return {
        **env,
        "MODEL": str(tiny_causal_lm),
        "WANDB_API_KEY": secret,
        "MLFLOW_TRACKING_TOKEN": secret,
        "HOME": str(tmp_path / "home"),
        "MPLCONFIGDIR": str(mpl_config),
    }


@pytest.fixture
def tracked_worker(tracked_env: dict[str, str], tmp_path: Path):  # type: ignore[no-untyped-def]
    w = WorkerProcess(tracked_env, tmp_path / "worker.log")
    yield w
    w.stop()


def artifact_root(env: dict[str, str], job_id: str) -> Path:
    return store_root(env) / artifact_path("default", job_id, "")


def unpack(archive: Path, dest: Path) -> Path:
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def scalars(folder: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def points(redis, job_id: str, split: str, key: str) -> dict[int, float]:  # type: ignore[no-untyped-def]
    return {p["step"]: p["values"][key] for p in metric_points(redis, job_id) if p["split"] == split}


def assert_close(got: dict[int, float], want: dict[int, float]) -> None:
    assert got.keys() == want.keys(), (got, want)
    assert all(got[s] == pytest.approx(want[s], rel=1e-6) for s in want), (got, want)  # TensorBoard keeps float32


def wandb_processes(secret: str) -> list[str]:
    """Live W&B processes started with `secret` in their environment: what a job would have left running."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "wandb" in cmdline and secret.encode() in (proc / "environ").read_bytes():
                found.append(cmdline)
        except OSError:  # gone meanwhile
            continue
    return found


def test_wandb_and_mlflow_run_offline_and_are_kept_as_artifacts(
    redis, client, tracked_env, tracked_worker, secret: str, tmp_path: Path, monkeypatch
) -> None:
    job_id = submit(redis, tracked_env, request(tracked_env, ["wandb", "mlflow"]))
    job = wait_for(redis, job_id, worker=tracked_worker, timeout=120)
    assert job["status"] == "succeeded", (job, tracked_worker.output()[-3000:])
    # W&B's service process was stopped before the job ended, not left to die with the work horse.
    assert wandb_processes(secret) == []
    assert job["resolved"]["report_to"] == ["wandb", "mlflow", "tensorboard"]
    names = {a["name"] for a in job["artifacts"]}
    assert {"wandb.tar.gz", "mlruns.tar.gz"} <= names
    assert not any(n.startswith(("wandb/", "mlruns/")) for n in names)  # each store is one artifact
    train_loss = points(redis, job_id, "train", "loss")
    eval_loss = points(redis, job_id, "eval", "loss")
    # The baseline, then the job's evaluations (resolved eval_steps: several a run), each seen by every tracker below.
    assert len(train_loss) >= 3 and 0 in eval_loss and len(eval_loss) >= 2, eval_loss

    # TensorBoard: the Trainer's scalars, the same numbers as the job's metric points (downloaded through the API).
    assert any(n.startswith("tensorboard/events.out.tfevents.") for n in names)
    downloads = tmp_path / "downloads"
    assert client.jobs.download_all(job_id, downloads, prefix="tensorboard/")
    board = downloads  # download_all writes the names without their prefix
    assert_close(scalars(board, "train/loss"), train_loss)
    assert_close(scalars(board, "eval/loss"), eval_loss)

    # MLflow: one finished run named after the job in a file store, with the loss history.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    archive = client.jobs.download(job_id, "mlruns.tar.gz", downloads)
    store = unpack(archive, tmp_path / "mlflow") / "mlruns"
    tracking = MlflowClient(tracking_uri=store.as_uri())
    experiment = tracking.get_experiment_by_name("ftjobs")
    assert experiment is not None
    (run,) = tracking.search_runs([experiment.experiment_id])
    assert run.info.run_name == job_id and run.info.status == "FINISHED"
    assert run.data.tags["ftjobs.job_id"] == job_id and run.data.tags["ftjobs.attempt"] == "1"
    assert {m.step: m.value for m in tracking.get_metric_history(run.info.run_id, "loss")} == train_loss
    assert {m.step: m.value for m in tracking.get_metric_history(run.info.run_id, "eval_loss")} == eval_loss
    assert run.data.params["learning_rate"] == str(job["resolved"]["learning_rate"])

    # W&B: one offline run folder named after the job and attempt, with its transaction log (`wandb sync` input).
    archive = client.jobs.download(job_id, "wandb.tar.gz", downloads)
    runs = list((unpack(archive, tmp_path / "wandb") / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and runs[0].name.endswith(f"-{job_id}-1")
    log = (runs[0] / f"run-{job_id}-1.wandb").read_bytes()
    assert b"train/loss" in log and b"eval/loss" in log and job_id.encode() in log

    # Credentials in the worker's environment reach no record, event, metric or artifact (archives included).
    everything = [json.dumps(job), json.dumps(events(redis, job_id)), json.dumps(metric_points(redis, job_id))]
    files = [p for p in artifact_root(tracked_env, job_id).rglob("*") if p.is_file()]
    files += [p for p in (tmp_path / "mlflow").rglob("*") if p.is_file()]
    files += [p for p in (tmp_path / "wandb").rglob("*") if p.is_file()]
    assert not [p for p in files if secret.encode() in p.read_bytes()]
    assert not [s for s in everything if secret in s]
    # Nothing written under the worker's $HOME by the trackers (a worker's home may be read-only).
    home = Path(tracked_env["HOME"])
    assert not [p for p in home.rglob("*") if "wandb" in p.name or "mlflow" in p.name]


def test_a_plain_job_gets_tensorboard_logs(redis, tracked_env, tracked_worker) -> None:
    job_id = submit(redis, tracked_env, request(tracked_env, [], validation_split=0.0, n_epochs=2))
    job = wait_for(redis, job_id, worker=tracked_worker, timeout=120)
    assert job["status"] == "succeeded", (job, tracked_worker.output()[-3000:])
    assert job["resolved"]["report_to"] == ["tensorboard"]
    names = {a["name"] for a in job["artifacts"]}
    assert not {"wandb.tar.gz", "mlruns.tar.gz"} & names
    train_loss = points(redis, job_id, "train", "loss")
    assert len(train_loss) >= 5
    assert_close(scalars(artifact_root(tracked_env, job_id) / "tensorboard", "train/loss"), train_loss)


def test_a_deployments_mlflow_server_is_used_and_a_cancelled_run_is_ended(
    redis, env, tiny_causal_lm: Path, tmp_path: Path, secret: str, monkeypatch
) -> None:
    server = tmp_path / "server"  # a file store standing in for the deployment's tracking server
    worker_env = {
        **env,
        "MODEL": str(tiny_causal_lm),
        "MLFLOW_TRACKING_URI": server.as_uri(),
        "MLFLOW_ALLOW_FILE_STORE": "true",
        "MLFLOW_EXPERIMENT_NAME": "team-experiments",
        "WANDB_API_KEY": secret,
    }
    w = WorkerProcess(worker_env, tmp_path / "worker.log")
    try:
        job_id = submit(redis, worker_env, request(worker_env, ["mlflow", "wandb"], batch_size=1, max_steps=100_000))
        wait_for(redis, job_id, ["running"], worker=w, timeout=60, until=lambda j: j["progress"].get("step", 0) >= 2)
        assert guarded_write(redis, job_id, {"cancel_requested": True}, statuses=["running"])
        job = wait_for(redis, job_id, worker=w, timeout=30)
        assert job["status"] == "cancelled", (job, w.output()[-3000:])
        assert job["artifacts"] == [] and wandb_processes(secret) == []
    finally:
        w.stop()
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=server.as_uri())
    experiment = client.get_experiment_by_name("team-experiments")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == job_id and run.info.status == "KILLED"
    assert run.data.tags["ftjobs.job_id"] == job_id


def test_a_tracker_the_worker_switched_off_is_unavailable(monkeypatch) -> None:
    check(["tensorboard", "wandb", "mlflow"])  # all installed in this environment
    # A deployment switched MLflow off (transformers would refuse it) and W&B off: asking for them fails the job.
    monkeypatch.setenv("DISABLE_MLFLOW_INTEGRATION", "TRUE")
    with pytest.raises(IntegrationUnavailable) as info:
        check(["wandb", "mlflow"])
    assert info.value.param == "integrations" and info.value.code == "integration_unavailable"
    assert "mlflow" in info.value.message and "wandb" not in info.value.message
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with pytest.raises(IntegrationUnavailable, match="wandb"):
        check(["wandb"])
