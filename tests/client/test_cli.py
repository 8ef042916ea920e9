"""The `ftjobs` CLI: its commands over a faked network, and its error output (never a traceback)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ftjobs.client.cli import main
from tests.client.fake_api import FakeAPI, error_json, job_json

JOB = job_json()["id"]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> FakeAPI:
    monkeypatch.setattr("ftjobs.client.client.time.sleep", lambda s: None)
    fake = FakeAPI()
    fake.add_job(
        progress={"step": 45, "total_steps": 113, "epoch": 1.2, "elapsed_seconds": 62.0, "eta_seconds": 95.0},
        last_metrics={"train_loss": 0.2345},
    )
    return fake


def run(api: FakeAPI, *argv: str) -> int:
    return main(list(argv), client=api.client())


def ftjobs(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ftjobs.launch.cli", *argv], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_help_lists_every_command() -> None:
    out = ftjobs("--help")
    assert out.returncode == 0
    for command in (
        "submit",
        "profile",
        "status",
        "list",
        "logs",
        "metrics",
        "download",
        "cancel",
        "up",
        "worker",
        "demo",
    ):
        assert command in out.stdout
    assert ftjobs("submit", "--help").returncode == 0


def test_connection_error_prints_one_line_and_exits_1() -> None:
    out = ftjobs("--url", "http://127.0.0.1:9", "status", JOB)
    assert out.returncode == 1
    assert out.stderr.startswith("error: connection_error: GET http://127.0.0.1:9/v1/jobs/")
    assert "Traceback" not in out.stderr + out.stdout


def test_api_error_prints_code_message_param(api: FakeAPI, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(api, "status", "ftjob-" + "f" * 20) == 1
    err = capsys.readouterr().err
    assert err == f"error: job_not_found: no job ftjob-{'f' * 20} (job_id)\n"
    api.fail_next(
        422, error_json("invalid_hyperparameters", "n_epochs must be >= 1", "hyperparameters.n_epochs")
    )
    assert run(api, "submit", "file-" + "b" * 20, "--model", "m", "--epochs", "0") == 1
    assert (
        capsys.readouterr().err
        == "error: invalid_hyperparameters: n_epochs must be >= 1 (hyperparameters.n_epochs)\n"
    )


def test_a_missing_training_file_is_an_error_not_a_traceback(
    api: FakeAPI, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert run(api, "submit", str(tmp_path / "nope.jsonl"), "--model", "m") == 1
    assert capsys.readouterr().err.startswith("error: file_not_found_error: ")


def test_submit_uploads_and_prints_the_job_id(
    api: FakeAPI, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text('{"text": "hi", "label": "ham"}\n')
    code = run(
        api,
        "submit",
        str(train),
        "--validation-file",
        "file-" + "c" * 20,
        "--model",
        "/models/minilm",
        "--task",
        "classification",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--learning-rate",
        "5e-4",
        "--max-seq-length",
        "64",
        "--seed",
        "7",
        "--lora-r",
        "4",
        "--quantize",
        "4bit",
        "--parent-job-id",
        "ftjob-" + "d" * 20,
        "--suffix",
        "spam",
    )
    assert code == 0
    out = capsys.readouterr()
    assert out.out.strip() == f"ftjob-{1:020d}"
    assert "uploaded" in out.err
    body = api.created[-1]
    assert body["hyperparameters"] == {
        "n_epochs": 2,
        "batch_size": 16,
        "learning_rate": 5e-4,
        "max_seq_length": 64,
        "seed": 7,
    }
    assert body["method"] == {"type": "lora", "r": 4, "quantize": "4bit"}
    assert body["parent_job_id"] == "ftjob-" + "d" * 20 and body["validation_file"] == "file-" + "c" * 20
    assert body["training_file"] == "file-" + "b" * 20 and body["suffix"] == "spam"
    assert api.requests[-1].headers["Idempotency-Key"]


@pytest.mark.parametrize(("final", "code"), [("succeeded", 0), ("failed", 1)])
def test_submit_follow_prints_events_and_exits_with_the_outcome(
    api: FakeAPI, capsys: pytest.CaptureFixture[str], final: str, code: int
) -> None:
    new_id = f"ftjob-{1:020d}"

    def advance(fake: FakeAPI, job_id: str) -> None:
        if fake.jobs[job_id]["status"] == "queued":
            fake.add_event(job_id, "running", type="status")
            fake.add_event(
                job_id,
                "m",
                type="metrics",
                data={"step": 10, "total_steps": 100, "epoch": 0.5, "loss": 0.25, "eta_seconds": 70},
            )
            fake.jobs[job_id]["status"] = final
            if final == "failed":
                fake.jobs[job_id]["error"] = {"code": "out_of_memory", "message": "CUDA OOM"}

    api.on_job_poll = advance
    assert run(api, "submit", "file-" + "b" * 20, "--model", "m", "--follow") == code
    out = capsys.readouterr().out
    assert out.startswith(new_id + "\n")
    assert "step 10/100  epoch 0.50  loss 0.25  ETA 1m10s" in out
    assert f"{new_id}  {final}" in out
    if final == "failed":
        assert "error     out_of_memory: CUDA OOM" in out


def test_status_shows_progress_eta_and_metrics(api: FakeAPI, capsys: pytest.CaptureFixture[str]) -> None:
    api.jobs[JOB]["results"] = {
        "baseline": {"f1": 0.41, "accuracy": 0.8},
        "final": {"f1": 0.97, "accuracy": 0.99},
    }
    assert run(api, "status", JOB) == 0
    out = capsys.readouterr().out
    assert f"{JOB}  running" in out
    assert "45/113 steps   40%  epoch 1.20  elapsed 1m02s  ETA 1m35s" in out
    assert "train_loss=0.2345" in out
    assert "f1" in out and "0.97" in out and "0.41" in out


def test_json_flag_prints_the_api_json(api: FakeAPI, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(api, "status", JOB, "--json") == 0
    assert json.loads(capsys.readouterr().out)["id"] == JOB
    assert run(api, "--json", "list") == 0
    assert json.loads(capsys.readouterr().out)["data"][0]["id"] == JOB


def test_profile_uploads_a_path_or_takes_an_id(client, capsys, tmp_path):  # type: ignore[no-untyped-def]
    # Against the real app: the profile the CLI prints is the one the API computed at upload.
    data = tmp_path / "sms.csv"
    data.write_text("text,label\nwin a prize now,spam\nsee you at 5,ham\nsee you at 5,ham\nok,spam\n")
    assert main(["profile", str(data)], client=client) == 0
    out, err = capsys.readouterr()
    file_id = err.split(" -> ")[1].split()[0]
    assert err.startswith(f"uploaded {data} -> {file_id} (4 rows, text_label)")
    lines = out.splitlines()
    assert lines[0] == f"{file_id}  text_label  4 rows"
    assert lines[1].split() == ["columns", "label,", "text"]
    assert lines[3].split() == "field empty missing chars min/median/p95/max words min/median/p95/max".split()
    assert lines[4].split() == ["text", "0", "0", "2/12/15/15", "1/4/4/4"]
    assert lines[5].split() == ["labels", "2", "distinct"]
    assert [line.split() for line in lines[7:9]] == [["spam", "2", "50.0%"], ["ham", "2", "50.0%"]]
    assert lines[9].strip() == "duplicates  1 exact, 1 repeated texts (0 with another label)"

    assert main(["profile", file_id, "--json"], client=client) == 0
    out, err = capsys.readouterr()
    assert err == "" and json.loads(out) == client.files.profile(file_id).model_dump(mode="json")
    assert main(["profile", "file-" + "0" * 20], client=client) == 1
    assert capsys.readouterr().err.startswith("error: file_not_found: ")


def test_list_logs_metrics_cancel(api: FakeAPI, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(api, "list") == 0
    assert JOB in capsys.readouterr().out
    for i in range(3):
        api.add_event(JOB, f"event {i}", level="warning" if i == 1 else "info")
    assert run(api, "logs", JOB) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == ["event 0", "WARNING event 1", "event 2"]
    api.metrics[JOB] = [
        {"id": "1-0", "step": 10, "split": "train", "epoch": 0.5, "created_at": 1.0, "values": {"loss": 0.5}},
        {
            "id": "1-1",
            "step": 20,
            "split": "eval",
            "epoch": 1.0,
            "created_at": 2.0,
            "values": {"loss": 0.4, "f1": 0.9},
        },
    ]
    assert run(api, "metrics", JOB) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["step", "split", "epoch", "loss", "f1"]
    assert table[2].split() == ["20", "eval", "1.00", "0.4", "0.9"]
    assert run(api, "cancel", JOB) == 0
    assert capsys.readouterr().out.strip() == f"{JOB}  cancelled"


def test_download_with_prefix(api: FakeAPI, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    api.add_artifact(JOB, "adapter/adapter_config.json", b"{}")
    api.add_artifact(JOB, "adapter/adapter_model.safetensors", b"\0" * 64)
    api.add_artifact(JOB, "metrics.json", b"{}")
    assert run(api, "download", JOB, "--dest", str(tmp_path), "--prefix", "adapter/") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # written without the prefix
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert not (tmp_path / "metrics.json").exists()
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert run(api, "download", JOB, "--dest", str(tmp_path), "--prefix", "checkpoints/") == 1
    assert "no_artifacts" in capsys.readouterr().err


def test_checksum_failure_is_reported_as_an_error(
    api: FakeAPI, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    api.add_artifact(JOB, "metrics.json", b"{}")
    api.header_sha["metrics.json"] = "0" * 64
    assert run(api, "download", JOB, "--dest", str(tmp_path)) == 1
    assert capsys.readouterr().err.startswith("error: checksum_mismatch: artifact metrics.json")
    assert list(tmp_path.iterdir()) == []


def test_unknown_arguments_are_refused(api: FakeAPI) -> None:
    with pytest.raises(SystemExit) as info:
        run(api, "status", JOB, "--bogus")
    assert info.value.code == 2
