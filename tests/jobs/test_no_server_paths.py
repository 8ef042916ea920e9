"""What a tenant can read of a job holds no server detail: not the model root, the data folder, the host name or
the OS user. A real tiny LoRA job (with every tracker installed here) runs through the API and a real worker;
then its record, events, metrics, file profile and every artifact (archives unpacked, event logs decoded) are
read back through the API and searched."""

from __future__ import annotations

import getpass
import importlib.util
import io
import json
import re
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import WorkerProcess
from tests.jobs.helpers import eventually

ROWS = [{"prompt": f"count to {n} :", "completion": " ".join(str(i) for i in range(1, n + 1))} for n in range(1, 11)]
TRACKERS = [name for name in ("tensorboard", "mlflow", "wandb") if importlib.util.find_spec(name) is not None]
SHORT = 6  # a needle shorter than this ("vm", "root") is searched for as a word in text only: bytes of weights
# or floats hold any two letters by chance


class Needles:
    """The server details to look for: long ones as bytes anywhere, short ones as words in decoded text."""

    def __init__(self, paths: list[Path], names: list[str]) -> None:
        forms = {str(p) for p in paths} | {str(p.resolve()) for p in paths}
        self.long = sorted({f.encode() for f in forms} | {n.encode() for n in names if len(n) >= SHORT})
        short = [n for n in names if len(n) < SHORT]
        self.words = [re.compile(rb"(?<![A-Za-z0-9_])" + re.escape(n.encode()) + rb"(?![A-Za-z0-9_])") for n in short]

    def in_bytes(self, data: bytes) -> list[str]:
        return [n.decode() for n in self.long if n in data]

    def in_text(self, data: bytes) -> list[str]:
        found = self.in_bytes(data)
        return found + [w.pattern.decode(errors="replace") for w in self.words if w.search(data)]


def is_text(data: bytes) -> bool:
    if b"\0" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def tfevents_text(data: bytes, tmp: Path) -> bytes:
    """A TensorBoard event file as the text of its records (tags, text summaries, numbers as decimals)."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    path = tmp / "events.out.tfevents.check"
    path.write_bytes(data)
    return "\n".join(str(event) for event in EventFileLoader(str(path)).Load()).encode()


def wandb_records(data: bytes) -> Iterator[bytes]:
    """The records of a W&B transaction log: a 7-byte header, then LevelDB log blocks of 32 KiB whose records
    are (crc32, length, type: 1 full, 2 first, 3 middle, 4 last) + payload (wandb/sdk/internal/datastore.py)."""
    block, pos, parts = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # the block's tail is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        payload, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        parts = payload if kind in (1, 2) else parts + payload
        if kind in (1, 4):
            yield parts


def wandb_text(data: bytes, tmp: Path) -> bytes:
    """A W&B transaction log (`.wandb`) as the text of its records (settings, run, history, summary)."""
    from wandb.proto import wandb_internal_pb2

    records = []
    for raw in wandb_records(data):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        records.append(str(record))
    assert records, "no records in the W&B log"
    return "\n".join(records).encode()


def leaks(name: str, data: bytes, needles: Needles, tmp: Path) -> list[str]:
    """Where `data` (a file called `name`) shows a needle: its name, its text, the members of an archive."""
    found = [f"{name} (name): {n}" for n in needles.in_text(name.encode())]
    if name.endswith((".tar.gz", ".tgz")):
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            for member in tar.getmembers():
                content = tar.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
                found += leaks(f"{name}:{member.name}", content, needles, tmp)
        return found
    if "tfevents" in name:
        found += [f"{name}: {n}" for n in needles.in_bytes(data) + needles.in_text(tfevents_text(data, tmp))]
    elif name.endswith(".wandb"):
        found += [f"{name}: {n}" for n in needles.in_bytes(data) + needles.in_text(wandb_text(data, tmp))]
    elif is_text(data):
        found += [f"{name}: {n}" for n in needles.in_text(data)]
    else:  # weights, images: bytes only
        found += [f"{name}: {n}" for n in needles.in_bytes(data)]
    return found


@pytest.fixture
def paths_env(env: dict[str, str], tiny_causal_lm: Path, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "home").mkdir()
    (tmp_path / "mpl").mkdir()
    return {
        **env,
        "MODEL": str(tiny_causal_lm),
        "HOME": str(tmp_path / "home"),  # W&B and matplotlib write there: not in the real home
        "MPLCONFIGDIR": str(tmp_path / "mpl"),
        "FTJOBS_CHECKPOINT_STEPS": "2",  # checkpoints are taken (and their events written) on the way
    }


@pytest.fixture
def api(paths_env: dict[str, str]) -> Iterator[httpx.Client]:
    from fastapi.testclient import TestClient

    from ftjobs.core.settings import Settings
    from ftjobs.service.main import create_app

    with TestClient(create_app(Settings.from_env(paths_env)), raise_server_exceptions=False) as tc:
        yield tc


def get(api: httpx.Client, url: str, **params: Any) -> httpx.Response:
    response = api.get(url, params=params)
    assert response.status_code == 200, (url, response.text)
    return response


def test_a_tenant_reads_no_server_path_host_or_user(
    api: httpx.Client, paths_env: dict[str, str], model_root: Path, tmp_path: Path
) -> None:
    body = "".join(json.dumps(r) + "\n" for r in ROWS * 2).encode()
    uploaded = api.post("/v1/files", files={"file": ("train.jsonl", body, "application/jsonl")})
    assert uploaded.status_code == 201, uploaded.text
    file_id = uploaded.json()["id"]
    request = {
        "model": paths_env["MODEL"],  # the absolute path under the model root, as a tenant may send it
        "training_file": file_id,
        "method": {"type": "lora", "r": 4, "alpha": 8},
        "hyperparameters": {"n_epochs": 1, "batch_size": 4, "max_seq_length": 32, "validation_split": 0.2},
        "integrations": [t for t in TRACKERS if t != "tensorboard"],  # TensorBoard logs on every job
        "eval_samples": 2,
    }
    created = api.post("/v1/jobs", json=request)
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    assert created.json()["model"] == Path(paths_env["MODEL"]).name  # relative to its model root

    worker = WorkerProcess(paths_env, tmp_path / "worker.log")
    try:
        job: dict[str, Any] = {}

        def finished() -> bool:
            nonlocal job
            assert worker.proc.poll() is None, worker.output()[-3000:]
            job = get(api, f"/v1/jobs/{job_id}").json()
            return job["status"] in ("succeeded", "failed", "cancelled")

        assert eventually(finished, timeout=300), (job, worker.output()[-3000:])
    finally:
        worker.stop()
    assert job["status"] == "succeeded", (job, worker.output()[-3000:])
    assert job["model"] == job["resolved_hyperparameters"]["model"] == Path(paths_env["MODEL"]).name

    # Everything the API serves about the job, raw.
    served: dict[str, bytes] = {
        "job": get(api, f"/v1/jobs/{job_id}").content,
        "jobs": get(api, "/v1/jobs").content,
        "events": get(api, f"/v1/jobs/{job_id}/events", limit=1000).content,
        "metrics": get(api, f"/v1/jobs/{job_id}/metrics", limit=1000).content,
        "file": get(api, f"/v1/files/{file_id}").content,
        "profile": get(api, f"/v1/files/{file_id}/profile").content,
        "artifacts": get(api, f"/v1/jobs/{job_id}/artifacts").content,
    }
    names = [a["name"] for a in json.loads(served["artifacts"])["data"]]
    assert "adapter/adapter_config.json" in names and "README.md" in names and "metrics.json" in names
    assert any("tfevents" in n for n in names) == ("tensorboard" in TRACKERS)
    for tracker, archive in (("mlflow", "mlruns.tar.gz"), ("wandb", "wandb.tar.gz")):
        assert (archive in names) == (tracker in TRACKERS), names
    for name in names:
        served[name] = get(api, f"/v1/jobs/{job_id}/artifacts/{name}").content

    needles = Needles(
        [model_root, Path(paths_env["FTJOBS_DATA_DIR"])], [socket.gethostname(), getpass.getuser()]
    )
    scratch = tmp_path / "scan"
    scratch.mkdir()
    found = [leak for name, data in served.items() for leak in leaks(name, data, needles, scratch)]
    assert found == [], "\n".join(found[:40])

    # The weights still say which base model they adapt: as the tenant named it, relative to the root.
    adapter_config = json.loads(served["adapter/adapter_config.json"])
    assert adapter_config["base_model_name_or_path"] == Path(paths_env["MODEL"]).name
    assert f"`{Path(paths_env['MODEL']).name}`" in served["README.md"].decode()
    if "mlflow" in TRACKERS:  # MLflow's own tags are ours, not the server's user, script or commit
        with tarfile.open(fileobj=io.BytesIO(served["mlruns.tar.gz"])) as tar:
            tags = {Path(m.name).name: tar.extractfile(m).read().decode() for m in tar if "/tags/" in m.name}  # type: ignore[union-attr]
        assert tags.get("mlflow.user") == "ftjobs" and tags.get("mlflow.source.name") == "ftjobs", tags
        assert not any(k.startswith("mlflow.source.git") for k in tags), tags


def test_model_references_are_shown_relative_to_their_root(tmp_path: Path) -> None:
    from ftjobs.core.base_models import packaged_model, shown_model
    from ftjobs.jobs.report import ServerPaths

    roots = [tmp_path / "models", tmp_path / "one-model"]
    assert shown_model(str(roots[0] / "org" / "llama"), roots) == "org/llama"
    assert shown_model("org/llama", roots) == "org/llama"  # relative: as requested
    assert shown_model(str(roots[1]), roots) == "one-model"  # a root that is one model: its name, not its path
    minilm = packaged_model("all-MiniLM-L6-v2")
    if minilm is not None:
        assert shown_model(str(minilm), [minilm]) == "all-MiniLM-L6-v2"
    hidden = ServerPaths.of(roots, [tmp_path / "data"], [tmp_path / "work"])
    message = f"OSError: {roots[0]}/org/llama/config.json; {roots[0]}; {tmp_path}/data/x; {tmp_path}/work/out"
    assert hidden.hide(message) == "OSError: org/llama/config.json; <models>; <data>/x; <work>/out"
