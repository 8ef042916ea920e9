"""bench/gpu.py's smoke mode (`--tiny --cpu`): the whole script (model build, data, one process per case, the table
and the JSON) on a tiny llama with the fewest steps it accepts, so the GPU run on a lent machine is not its first."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu.py"
CASES = ["hf padded", "hf packed", "hf packed+liger", "hf qlora padded", "ftjobs padded"]
pytestmark = pytest.mark.timeout(300)  # measured ~31 s on an idle machine: five fresh processes import torch


def test_the_smoke_run_measures_every_case_it_can_and_says_why_it_skips_the_others(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, str(SCRIPT), "--tiny", "--cpu", "--steps", "2", "--warmup", "1", "--batch", "2",
           "--max-len", "64", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert json.loads(done.stdout.strip().splitlines()[-1]) == summary  # the last stdout line is the same JSON
    assert summary["device"] == "cpu" and summary["model"] == "tiny" and summary["versions"]["torch"], summary
    results = {r["case"]: r for r in summary["results"]}
    assert list(results) == CASES
    liger = importlib.util.find_spec("liger_kernel") is not None
    for case, r in results.items():
        if case == "hf qlora padded":  # 4-bit NF4 needs CUDA: always a skip here
            assert r["skipped"] == "needs CUDA and bitsandbytes", r
        elif case == "hf packed+liger" and not liger:
            assert r["skipped"] == "liger-kernel not installed", r
        else:
            assert "error" not in r and "skipped" not in r, r
            assert r["steps"] == 1 and r["tokens"] > 0 and r["tokens_per_s"] > 0, r  # the one step after warm-up
            assert r["peak_gpu_bytes"] is None, r  # no GPU: no peak memory, no memory ratio
            assert r["speed_vs_hf_padded"] > 0 and "memory_vs_hf_padded" not in r, r
    assert results["hf padded"]["speed_vs_hf_padded"] == 1.0


def test_steps_must_outnumber_the_warmup_ones() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--cpu", "--steps", "1", "--warmup", "1"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "--steps" in done.stderr, done.stderr[-2000:]
