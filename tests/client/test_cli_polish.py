"""The CLI's edges, with the real `ftjobs` process against a live API (uvicorn, real Redis, a worker where a job must
run): --version, completion, clear messages for bad values, a quiet exit on a closed pipe, uploads reused by sha256,
`download --prefix` without the prefix, progress bars on a terminal only, a file in the wrong multipart field."""

from __future__ import annotations

import hashlib
import io
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest

from ftjobs.client.client import Client
from ftjobs.client.models import JobStatus
from ftjobs.client.transfers import LineBars
from tests.conftest import REPO
from tests.service.api_process import ApiProcess, api_process
from tests.service.conftest import ROWS, jsonl
from tests.service.tenant_jobs import tiny_job_request

FTJOBS = [sys.executable, "-m", "ftjobs.launch.cli"]
TERMINAL_ENV = {"TERM": "xterm-256color", "COLUMNS": "160"}


@pytest.fixture
def live(env: dict[str, str], tmp_path: Path) -> Iterator[ApiProcess]:
    with api_process(env, tmp_path / "api.log") as api:
        yield api


def ftjobs(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FTJOBS, *argv], cwd=cwd, capture_output=True, text=True, timeout=120)


def on_a_closed_pipe(*argv: str) -> tuple[int, str]:
    """Run with stdout a pipe whose reader is already gone (`| head` after head left): (exit code, stderr)."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to stdout now fails with EPIPE
    try:
        proc = subprocess.run([*FTJOBS, *argv], cwd=REPO, stdout=write_end, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    return proc.returncode, proc.stderr.decode(errors="replace")


def with_stderr_on_a_terminal(*argv: str, cwd: Path) -> tuple[int, str, str]:
    """Run with stderr on a pseudo-terminal (stdout a pipe): (exit code, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*FTJOBS, *argv], cwd=cwd, stdout=subprocess.PIPE, stderr=slave, env={**os.environ, **TERMINAL_ENV}
    )
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.stdout is not None
    out = proc.stdout.read().decode()
    return proc.wait(60), out, shown.decode(errors="replace")


def write_rows(path: Path, n: int) -> Path:
    path.write_bytes(jsonl(ROWS["prompt_completion"] * n))
    return path


# --------------------------------------------------------------------------- no server needed


def test_version_and_bad_values_name_the_option() -> None:
    out = ftjobs("--version")
    assert out.returncode == 0 and out.stdout == f"ftjobs {version('ftjobs')}\n"
    out = ftjobs("submit", "train.jsonl", "--model", "m", "--learning-rate", "abc")
    assert out.returncode == 2
    last = out.stderr.splitlines()[-1]
    assert last == "ftjobs submit: error: --learning-rate: 'abc' is not a number (a float, or 'auto')"
    out = ftjobs("submit", "train.jsonl", "--model", "m", "--epochs", "two")
    assert out.stderr.splitlines()[-1] == "ftjobs submit: error: --epochs: 'two' is not a whole number"
    assert "invalid" not in ftjobs("demo", "--learning-rate", "1e-x").stderr
    assert ftjobs("submit", "train.jsonl", "--model", "m", "--learning-rate", "auto", "--url", "http://127.0.0.1:9")\
        .stderr.startswith("error: ")  # accepted: it got as far as the (absent) server


def test_bash_completion_completes_commands_options_and_values(tmp_path: Path) -> None:
    script = ftjobs("completion", "bash")
    assert script.returncode == 0
    (tmp_path / "ftjobs.bash").write_text(script.stdout)
    probe = tmp_path / "probe.sh"
    probe.write_text(
        f"source {tmp_path / 'ftjobs.bash'}\n"
        't() { COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]}-1)); COMPREPLY=(); _ftjobs;'
        ' echo "${COMPREPLY[*]}"; }\n'
        "t ftjobs su\n"
        "t ftjobs submit --learning\n"
        "t ftjobs --url http://x submit train.jsonl --task ''\n"
        "t ftjobs webhooks ''\n"
        "t ftjobs webhooks create --event-type fine_tuning.job.s\n"
        "t ftjobs completion ''\n"
    )
    lines = subprocess.run(["bash", str(probe)], capture_output=True, text=True, timeout=60, check=True).stdout
    su, lr, task, webhooks, event, shells = lines.splitlines()
    assert su == "submit"
    assert lr == "--learning-rate"
    assert task.split() == ["causal_lm", "classification", "seq2seq", "dpo"]
    assert {"create", "list", "delete", "deliveries"} <= set(webhooks.split())
    assert event == "fine_tuning.job.succeeded"
    assert {"bash", "zsh"} <= set(shells.split())
    zsh = ftjobs("completion", "zsh").stdout
    assert "bashcompinit" in zsh and "complete -o default -F _ftjobs ftjobs" in zsh
    assert subprocess.run(["bash", "-n"], input=zsh.split("\n", 3)[3], text=True).returncode == 0


def test_transfer_bars_draw_one_line_on_a_terminal_without_rich() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    bars = LineBars(out, "downloading")
    bars("a.bin", 1_000_000, 4_000_000)
    bars("a.bin", 4_000_000, 4_000_000)
    bars("b.bin", 500, None)
    bars.close()
    assert out.getvalue().split("\n") == [
        "\r\x1b[2Kdownloading a.bin  1.0 MB/4.0 MB   25%\r\x1b[2Kdownloading a.bin  4.0 MB/4.0 MB  100%",
        "\r\x1b[2Kdownloading b.bin  0.0 MB",
        "",
    ]


# --------------------------------------------------------------------------- against the live API


def test_every_command_exits_quietly_on_a_closed_pipe(live: ApiProcess, tiny_causal_lm: Path, tmp_path: Path) -> None:
    api = Client(base_url=live.url)
    train = api.files.upload(write_rows(tmp_path / "train.jsonl", 8))
    job = api.jobs.create(tiny_job_request(tiny_causal_lm, train.id, train.id))  # type: ignore[arg-type]
    url = ("--url", live.url)
    for argv in (
        ["--help"],
        ["--version"],
        ["submit", "--help"],
        ["completion", "bash"],
        ["models", *url],
        ["list", *url],
        ["list", "--json", *url],
        ["status", job.id, *url],
        ["logs", job.id, *url],
        ["metrics", job.id, *url],
        ["profile", train.id, *url],
        [*url, "webhooks", "list"],
    ):
        code, err = on_a_closed_pipe(*argv)
        assert (code, err) == (0, ""), argv


def test_profile_and_submit_reuse_an_upload_of_the_same_bytes(
    live: ApiProcess, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    data = write_rows(tmp_path / "train.jsonl", 8)
    first = ftjobs("profile", str(data), "--url", live.url)
    assert first.returncode == 0, first.stderr
    file_id = first.stderr.split(" -> ")[1].split()[0]
    again = ftjobs("profile", str(data), "--url", live.url)
    assert again.returncode == 0 and again.stderr.startswith(f"reusing {file_id}: {data} was uploaded before")
    submitted = ftjobs("submit", str(data), "--model", str(tiny_causal_lm), "--url", live.url)
    assert submitted.returncode == 0 and submitted.stderr.startswith(f"reusing {file_id}")
    api = Client(base_url=live.url)
    assert api.jobs.get(submitted.stdout.strip()).training_file == file_id
    assert [f.id for f in api.files.list(limit=100).data] == [file_id]  # one upload for three commands

    changed = write_rows(tmp_path / "more.jsonl", 9)
    assert ftjobs("profile", str(changed), "--url", live.url).stderr.startswith(f"uploaded {changed} -> file-")
    sha = hashlib.sha256(data.read_bytes()).hexdigest()
    found = httpx.get(f"{live.url}/v1/files", params={"sha256": sha}).json()
    assert [f["id"] for f in found["data"]] == [file_id] and found["data"][0]["source_sha256"] == sha
    bad = httpx.get(f"{live.url}/v1/files", params={"sha256": "xyz"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "sha256"


def test_download_prefix_writes_names_without_it_with_a_progress_bar_on_a_terminal(
    live: ApiProcess, worker, tiny_causal_lm: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    api = Client(base_url=live.url)
    train = api.files.upload(write_rows(tmp_path / "train.jsonl", 8))
    job = api.jobs.create(tiny_job_request(tiny_causal_lm, train.id, train.id))  # type: ignore[arg-type]
    job = api.jobs.wait(job.id, timeout=600)
    assert job.status is JobStatus.succeeded, (job.error, worker.output()[-3000:])
    adapter = {a.name.removeprefix("adapter/"): a for a in api.jobs.artifacts(job.id) if a.name.startswith("adapter/")}
    assert "adapter_model.safetensors" in adapter

    code, out, shown = with_stderr_on_a_terminal(
        "download", job.id, "--prefix", "adapter/", "--dest", "adapter", "--url", live.url, cwd=tmp_path
    )
    assert code == 0, shown
    assert sorted(Path(p).name for p in out.split()) == sorted(adapter)
    for name, artifact in adapter.items():
        written = tmp_path / "adapter" / name
        assert hashlib.sha256(written.read_bytes()).hexdigest() == artifact.sha256
    assert not (tmp_path / "adapter" / "adapter").exists()
    assert "downloading" in shown and "adapter_model.safetensors" in shown

    quiet = ftjobs("download", job.id, "--prefix", "adapter", "--dest", "again", "--url", live.url, cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""  # stderr is no terminal: no bar, no escape codes
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == sorted(adapter)
    paths = api.jobs.download_all(job.id, tmp_path / "py", prefix="adapter/")  # the client the same way
    assert sorted(paths) == sorted(tmp_path / "py" / name for name in adapter)

    code, _, shown = with_stderr_on_a_terminal(
        "profile", str(write_rows(tmp_path / "new.jsonl", 50)), "--url", live.url, cwd=tmp_path
    )
    assert code == 0 and "uploading new.jsonl" in shown


def test_a_file_in_another_multipart_field_is_told_the_field_to_use(http) -> None:  # type: ignore[no-untyped-def]
    content = jsonl(ROWS["prompt_completion"])
    wrong = http.post("/v1/files", files={"data": ("train.jsonl", content, "application/jsonl")})
    assert wrong.status_code == 422
    error = wrong.json()["error"]
    assert error["param"] == "file" and "'file'" in error["message"] and "'data'" in error["message"]
    files = {"file": ("train.jsonl", content, "application/jsonl")}
    long_field = http.post("/v1/files", data={"data": content.decode() * 20}, files=files)
    assert long_field.status_code == 422
    assert long_field.json()["error"]["param"] == "file" and "'file'" in long_field.json()["error"]["message"]
