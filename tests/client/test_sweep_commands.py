"""`ftjobs sweep create|list|show|cancel` against the real app (no worker: the sweep stays as the API left it), and
the trial table it draws."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftjobs.client.cli import main
from ftjobs.client.models.sweeps import Sweep
from ftjobs.client.sweep_commands import describe, parse_param, watch

LR = "hyperparameters.learning_rate"


def test_sweep_commands_end_to_end(client, model_root: Path, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    rows = [{"prompt": f"say {w} :", "completion": f" {w}"} for w in ("red", "blue", "cat", "dog")] * 3
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["sweep", "create", str(train), "--validation-file", str(train), "--model", str(model_root / "tiny"),
            "--param", "hyperparameters.learning_rate=float:1e-5:1e-2:log", "--param", "method.r=choice:4,8",
            "--n-trials", "4", "--sampler", "random"]  # fmt: skip
    assert main(argv, client=client) == 0
    sweep_id = capsys.readouterr().out.strip()
    sweep = client.sweeps.get(sweep_id)
    assert sweep.request.n_trials == 4 and sweep.request.sampler == "random"
    assert sweep.request.search_space["method.r"].model_dump() == {"type": "categorical", "values": [4, 8]}

    assert main(["sweep", "show", sweep_id], client=client) == 0
    shown = capsys.readouterr().out
    assert sweep_id in shown and "0/4 trials done" in shown and "no trial started yet" in shown
    assert main(["sweep", "list"], client=client) == 0
    assert sweep_id in capsys.readouterr().out
    assert main(["--json", "sweep", "cancel", sweep_id], client=client) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "cancelled"
    assert main(["sweep", "cancel", sweep_id], client=client) == 0  # idempotent
    assert "cancelled" in capsys.readouterr().out

    # A bad --param is a usage error; a bad range comes back as the API's 422 naming the field.
    with pytest.raises(SystemExit):
        main([*argv[:7], "--param", "hyperparameters.learning_rate=gauss:0:1"], client=client)
    assert main([*argv[:7], "--param", "hyperparameters.batch_size=int:0:4"], client=client) == 1
    assert "search_space.hyperparameters.batch_size" in capsys.readouterr().err


def test_trial_table_and_watch(client, capsys) -> None:  # type: ignore[no-untyped-def]
    sweep = Sweep.model_validate(
        {
            "id": "sweep-" + "1" * 20,
            "tenant": "default",
            "status": "succeeded",
            "created_at": 0,
            "direction": "minimize",
            "request": {
                "job": {"model": "m", "training_file": "file-" + "2" * 20},
                "search_space": {LR: {"type": "float", "low": 1e-5, "high": 1e-2}},
            },
            "trials": [
                {
                    "number": 0,
                    "job_id": "ftjob-a",
                    "state": "complete",
                    "params": {LR: 0.01},
                    "value": 1.5,
                    "steps": 12,
                    "total_steps": 12,
                },
                {
                    "number": 1,
                    "job_id": "ftjob-b",
                    "state": "pruned",
                    "params": {LR: 1e-5},
                    "value": 4.0,
                    "steps": 2,
                    "total_steps": 12,
                    "pruned_at_step": 2,
                },
            ],
            "best": {"number": 0, "job_id": "ftjob-a", "params": {LR: 0.01}, "value": 1.5},
        }
    )
    text = describe(sweep)
    assert "2/8 trials done" in text and "pruned@2" in text and "2/12" in text and "0 *" in text
    assert "best: trial 0 (ftjob-a) eval_loss 1.5" in text

    class Fixed:  # the one read `watch` makes of an ended sweep
        class sweeps:  # noqa: N801
            get = staticmethod(lambda sweep_id: sweep)

    import io

    out = io.StringIO()
    assert watch(Fixed, sweep.id, out) == 0  # type: ignore[arg-type]
    assert "learning_rate" in out.getvalue()
    assert parse_param("method.dropout=float:0:0.3") == ("method.dropout", {"type": "float", "low": 0.0, "high": 0.3,
                                                                            "log": False})  # fmt: skip
