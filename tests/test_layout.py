"""The layout: import boundaries in fresh interpreters, and rooms, arrows, cycles and packaging read from source."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import REPO

HEAVY = ["torch", "transformers", "peft", "trl", "datasets"]


def loaded_after(code: str, watch: list[str]) -> list[str]:
    """Which of `watch` (packages, e.g. `torch` or `ftjobs.jobs`) are in sys.modules after `code` runs."""
    report = (
        f"print(json.dumps(sorted({{w for w in {watch!r} for m in sys.modules if m == w or m.startswith(w + '.')}})))"
    )
    probe = f"{code}\nimport json, sys\n{report}"
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return list(json.loads(result.stdout.strip().splitlines()[-1]))


def test_service_never_loads_the_training_stack():  # type: ignore[no-untyped-def]
    assert loaded_after("import ftjobs.service.main, ftjobs.service.openapi", [*HEAVY, "ftjobs.jobs"]) == []


def test_app_and_its_spec_never_load_the_training_stack():  # type: ignore[no-untyped-def]
    code = (
        "from ftjobs.core.settings import Settings\n"
        "from ftjobs.service.main import create_app\n"
        "create_app(Settings.from_env({})).openapi()"
    )
    assert loaded_after(code, [*HEAVY, "ftjobs.jobs"]) == []


@pytest.mark.parametrize("module", ["ftjobs", "ftjobs.client.models", "ftjobs.core.keys"])
def test_client_contract_is_light(module):  # type: ignore[no-untyped-def]
    assert (
        loaded_after(
            f"import {module}",
            [*HEAVY, "fastapi", "starlette", "httpx", "rq", "redis", "ftjobs.service", "ftjobs.jobs"],
        )
        == []
    )


def test_jobs_never_load_the_web_stack():  # type: ignore[no-untyped-def]
    assert (
        loaded_after(
            "import ftjobs.jobs, ftjobs.jobs.train, ftjobs.jobs.worker",
            ["fastapi", "starlette", "ftjobs.service", "httpx"],
        )
        == []
    )


def test_the_http_client_loads_httpx_but_no_server_or_training_stack():  # type: ignore[no-untyped-def]
    watch = [*HEAVY, "fastapi", "starlette", "rq", "ftjobs.service", "ftjobs.jobs"]
    assert loaded_after("import ftjobs.client.client", watch) == []


def test_the_probe_sees_a_loaded_package():  # type: ignore[no-untyped-def]
    """The checks above can fail: the same probe reports a package that was imported."""
    assert loaded_after("import httpx", ["httpx", "torch"]) == ["httpx"]


# --- The static layout: rooms, arrows and packaging, read from the source (no imports) -------------------------

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PACKAGE_DIRS: dict[str, str] = PYPROJECT["tool"]["setuptools"]["package-dir"]
ROOMS = {name.rpartition(".")[2]: folder for name, folder in PACKAGE_DIRS.items()}
# Which rooms a room may import: arrows point down into core and client only; launch, the console script and
# the only room that starts processes, sits above the API and the worker.
ARROWS = {
    "ftjobs": {"client"},
    "client": set(),
    "core": {"client"},
    "service": {"core", "client"},
    "jobs": {"core", "client"},
    "launch": {"service", "jobs", "core", "client"},
}
# rich: optional, imported by client/progress.py only when it draws a live bar on a terminal.
THIRD_PARTY_ALLOWED = {"client": {"pydantic", "httpx", "rich"}, "core": {"pydantic", "redis", "rq", "fsspec"}}
THIRD_PARTY_DENIED = {
    "service": {"torch", "transformers", "peft", "accelerate"},
    "jobs": {"fastapi", "starlette", "httpx", "uvicorn"},
}


def source_modules() -> dict[str, Path]:
    """Every module of the namespace: dotted name -> file, as the package-dir mapping installs them."""
    modules: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            if package == "ftjobs" and parts and parts[0] in ROOMS:
                continue  # a room's own folder, mapped on its own
            modules[".".join([package, *parts])] = path
    return modules


MODULES = source_modules()


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ARROWS else "ftjobs"


def imports_of(module: str, path: Path) -> tuple[set[str], set[str]]:
    """(our modules, third-party top-level names) that `module` imports anywhere, lazily or by importlib string."""
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            names += [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.append(str(node.args[0].value))
    ours: set[str] = set()
    third: set[str] = set()
    for name in names:
        top = name.split(".")[0]
        if top == "ftjobs":
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                ours.add(name)
        elif top and top not in sys.stdlib_module_names and top != "__future__":
            third.add(top)
    # `from ftjobs.x import y` adds both ftjobs.x.y and ftjobs.x: keep the package only when nothing under it is named.
    return {m for m in ours if not any(o.startswith(m + ".") for o in ours)}, third


GRAPH = {module: imports_of(module, path) for module, path in MODULES.items()}


def test_every_package_is_installed():  # type: ignore[no-untyped-def]
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    on_disk = {m for m, p in MODULES.items() if p.name == "__init__.py"}
    assert on_disk - packages == set(), "packages missing from pyproject.toml [tool.setuptools] packages"
    assert packages - on_disk == set()


def test_no_import_cycles():  # type: ignore[no-untyped-def]
    """No module reaches itself through its imports (lazy and importlib ones included)."""
    edges = {m: {o for o in ours if o in MODULES} for m, (ours, _) in GRAPH.items()}
    cycles = [c for c in strongly_connected(edges) if len(c) > 1]
    assert cycles == []


def test_arrows_point_into_core_and_client():  # type: ignore[no-untyped-def]
    wrong = sorted(
        f"{module} imports {other}"
        for module, (ours, _) in GRAPH.items()
        for other in ours
        if room_of(other) != room_of(module) and room_of(other) not in ARROWS[room_of(module)]
    )
    assert wrong == []


def test_third_party_imports_per_room():  # type: ignore[no-untyped-def]
    wrong = []
    for module, (_, third) in GRAPH.items():
        room = room_of(module)
        if room in THIRD_PARTY_ALLOWED:
            wrong += [f"{module} imports {t}" for t in sorted(third - THIRD_PARTY_ALLOWED[room])]
        wrong += [f"{module} imports {t}" for t in sorted(third & THIRD_PARTY_DENIED.get(room, set()))]
    assert wrong == []


def test_modules_read_in_one_sitting():  # type: ignore[no-untyped-def]
    """No module past ~400 lines: a longer one is telling us where the next module is."""
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 420}
    assert long == {}


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """A lazy importlib import and a function-level torch import are both seen; a two-module loop is a cycle."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import importlib\n\ndef f():\n    importlib.import_module('ftjobs.jobs.worker')\n    import torch\n"
    )
    assert imports_of("ftjobs.client.probe", probe) == ({"ftjobs.jobs.worker"}, {"torch"})
    assert [c for c in strongly_connected({"a": {"b"}, "b": {"a"}, "c": {"a"}}) if len(c) > 1] == [["a", "b"]]


def strongly_connected(edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted; iterative-enough for a few hundred modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found
