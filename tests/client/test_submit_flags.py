"""`ftjobs submit --processes N --hardware CLASS --sharding ...`: the job's `resources`, over a faked network."""

from __future__ import annotations

import pytest

from tests.client.fake_api import FakeAPI
from tests.client.test_cli import run


@pytest.fixture
def api() -> FakeAPI:
    return FakeAPI()


def test_submit_sends_the_resources_flags(api: FakeAPI) -> None:
    argv = ["submit", "file-" + "b" * 20, "--model", "m", "--method", "full", "--batch-size", "4"]
    flags = ["--processes", "2", "--gpus-per-process", "1", "--hardware", "gpu", "--sharding", "fsdp"]
    assert run(api, *argv, *flags) == 0
    body = api.created[-1]
    assert body["resources"] == {"processes": 2, "gpus_per_process": 1, "hardware": "gpu", "sharding": "fsdp"}
    assert body["hyperparameters"] == {"batch_size": 4}


def test_submit_without_them_sends_none(api: FakeAPI) -> None:
    assert run(api, "submit", "file-" + "b" * 20, "--model", "m") == 0
    assert "resources" not in api.created[-1]


def test_a_bad_value_is_a_usage_error(api: FakeAPI, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        run(api, "submit", "file-" + "b" * 20, "--model", "m", "--sharding", "zero3")
    assert exit_.value.code == 2 and "--sharding" in capsys.readouterr().err


def test_submit_sends_nodes(api: FakeAPI) -> None:
    assert run(api, "submit", "file-" + "b" * 20, "--model", "m", "--nodes", "2", "--processes", "2") == 0
    assert api.created[-1]["resources"] == {"processes": 2, "nodes": 2}
