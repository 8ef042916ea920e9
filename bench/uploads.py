"""An upload of N JSONL rows through a real API process against a bare json.loads pass over the same lines.

    .venv/bin/python bench/uploads.py [--rows 1000000]

Prints the upload's wall time and its ratio to the parse floor, the API's peak RSS over its RSS before the
upload (VmHWM, reset first), and the p50/p99 of a job GET polled from another thread while the upload runs
(next to the same GET with the API idle).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import httpx
from api_reads import KEY, REPO, api_env, seed, uvicorn

MB = 1024 * 1024


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def write_rows(path: Path, rows: int) -> None:
    """prompt_completion rows of varied text, one JSON object a line."""
    with open(path, "w") as out:
        for n in range(rows):
            out.write(
                json.dumps({"prompt": f"Translate item {n} of the list :", "completion": f" item {n * 7 % 1000}"})
            )
            out.write("\n")


def parse_floor(path: Path) -> float:
    """Seconds for a bare json.loads of every line (the file read line by line)."""
    started = time.perf_counter()
    with open(path, "rb") as fh:
        for line in fh:
            json.loads(line)
    return time.perf_counter() - started


def poll(url: str, path: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {KEY}"}) as http:
        while not stop.is_set():
            started = time.perf_counter()
            assert http.get(path).status_code == 200
            out.append(time.perf_counter() - started)
            stop.wait(0.02)


def p(values: list[float], q: float) -> float:
    ms = sorted(v * 1000 for v in values)
    return ms[min(len(ms) - 1, int(len(ms) * q))] if ms else float("nan")


def measure(url: str, data: Path, job_id: str, rows: int) -> dict[str, float]:
    """One upload of `data` to the API at `url`: seconds, RSS before and at peak, job GETs idle and during it."""
    pid = int(next(p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_api(p, url)).name)
    idle: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=poll, args=(url, f"/v1/jobs/{job_id}", stop, idle))
    prober.start()
    time.sleep(2)
    stop.set()
    prober.join()
    busy: list[float] = []
    stop = threading.Event()
    prober = threading.Thread(target=poll, args=(url, f"/v1/jobs/{job_id}", stop, busy))
    before = status_kb(pid, "VmRSS") * 1024
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    prober.start()
    started = time.perf_counter()
    with open(data, "rb") as fh, httpx.Client(base_url=url, timeout=600) as http:
        response = http.post(
            "/v1/files",
            files={"file": ("rows.jsonl", fh, "application/jsonl")},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    took = time.perf_counter() - started
    stop.set()
    prober.join()
    peak = status_kb(pid, "VmHWM") * 1024
    assert response.status_code == 201, response.text[:500]
    assert response.json()["rows"] == rows
    return {
        "took": took, "before": before, "peak": peak, "idle_p50": p(idle, 0.5), "idle_p99": p(idle, 0.99),
        "busy_p50": p(busy, 0.5), "busy_p99": p(busy, 0.99), "gets": len(busy),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--before", type=Path, help="also upload to another checkout's API (see bench/api_reads.py)")
    args = parser.parse_args()
    results: dict[str, dict[str, float]] = {}
    floors: list[float] = []
    with tempfile.TemporaryDirectory() as tmp_name, api_env(Path(tmp_name)) as (env, redis):
        tmp = Path(tmp_name)
        job_id = seed(redis, 20, 0)
        data = tmp / "rows.jsonl"
        write_rows(data, args.rows)
        size = data.stat().st_size
        apps = {"after": (env, REPO)}
        if args.before:
            apps = {"before": ({**env, "PYTHONPATH": str(args.before)}, tmp), **apps}
        for label, (app_env, cwd) in apps.items():  # the floor next to each upload: the machine's load drifts
            floors.append(parse_floor(data))
            with uvicorn("ftjobs.service.main:app_from_env", app_env, tmp / f"{label}.log", True, cwd) as url:
                results[label] = measure(url, data, job_id, args.rows)
            floors.append(parse_floor(data))
    floor = statistics.mean(floors)
    print(f"{args.rows} rows, {size / MB:.0f} MB of JSONL; bare json.loads pass {floor:.2f} s (mean of {len(floors)})")
    for label, r in results.items():
        print(
            f"{label:<7} upload {r['took']:6.2f} s = {r['took'] / floor:4.2f}x the floor; API RSS {r['before'] / MB:.0f} MB"
            f" -> peak {r['peak'] / MB:.0f} MB (+{(r['peak'] - r['before']) / MB:.0f} MB); job GET p50/p99 idle "
            f"{r['idle_p50']:.1f}/{r['idle_p99']:.1f} ms, during the upload {r['busy_p50']:.1f}/{r['busy_p99']:.1f} ms"
            f" ({r['gets']:.0f} GETs)"
        )


def _is_api(proc: Path, url: str) -> bool:
    """The uvicorn process serving `url` (its command line names the port)."""
    try:
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"uvicorn" in b" ".join(cmdline) and url.rsplit(":", 1)[1].encode() in cmdline


if __name__ == "__main__":
    main()
