"""The memory preflight: counts read from config.json alone, and a job that cannot fit fails before it loads.

The estimate's accuracy against real peak RSS is bench/preflight.py's to show (fresh processes, larger models);
here: the counts equal the loaded model's, the estimate moves the way memory does, and a real worker with a
memory budget fails the job that exceeds it (`insufficient_memory`, naming the cause) and runs the one that fits,
recording its estimate.
"""

from __future__ import annotations

from pathlib import Path

from ftjobs.client.models import FullMethod, LoraMethod, Task
from ftjobs.jobs.training.preflight import Shape, estimate, model_shape, preflight
from tests.conftest import WorkerProcess
from tests.jobs.helpers import events, submit, wait_for
from tests.jobs.test_reliability import request

LORA = LoraMethod(r=4, alpha=8)
LONG_ROWS = [{"prompt": "count :", "completion": " ".join(str(i) for i in range(n, n + 120))} for n in range(8)]


def test_counts_come_from_the_config_and_equal_the_loaded_models(tiny_causal_lm: Path) -> None:
    from ftjobs.jobs.data.inputs import load_model
    from ftjobs.jobs.training.methods import apply_method, parameter_counts

    full = model_shape(tiny_causal_lm, Task.causal_lm, None, FullMethod())
    lora = model_shape(tiny_causal_lm, Task.causal_lm, None, LORA)
    loaded = apply_method(load_model(tiny_causal_lm, Task.causal_lm, None), LORA, Task.causal_lm)
    trainable, total = parameter_counts(loaded)
    assert full.parameters == lora.parameters and full.trainable == full.parameters
    assert lora.trainable == trainable and total == lora.parameters + lora.trainable  # the base, plus its adapters

    def peak(shape: Shape, batch: int = 4, seq: int = 64, checkpointing: bool = False) -> dict[str, int]:
        return estimate(shape, batch, seq, checkpointing, Task.causal_lm, "cpu")

    # Full fine-tuning keeps gradients and two AdamW moments of every weight; LoRA of its adapters only.
    assert peak(full)["optimizer"] == 2 * peak(full)["gradients"] == 2 * peak(full)["weights"]
    assert peak(lora)["optimizer"] < peak(full)["optimizer"] / 10
    # Activations grow with the batch and the sequence; gradient checkpointing keeps fewer of them.
    assert peak(full, batch=8)["activations"] > peak(full)["activations"]
    assert peak(full, seq=128)["activations"] > 2 * peak(full)["activations"]
    assert peak(full, checkpointing=True)["activations"] < peak(full)["activations"]


def test_a_job_on_several_processes_is_estimated_per_process(tiny_causal_lm: Path) -> None:
    """FSDP splits gradients and optimizer state across the ranks; on a CPU the ranks share its memory."""
    from ftjobs.client.models import Hyperparameters

    hp, budget = Hyperparameters(batch_size=4), 1024**3  # a budget below what the machine has: a fixed `available`
    one = preflight(tiny_causal_lm, Task.causal_lm, None, FullMethod(), hp, 64, budget)
    ddp = preflight(tiny_causal_lm, Task.causal_lm, None, FullMethod(), hp, 64, budget, processes=2)
    fsdp = preflight(tiny_causal_lm, Task.causal_lm, None, FullMethod(), hp, 64, budget, processes=2, sharded=True)
    assert ddp.parts == one.parts and ddp.available == fsdp.available == one.available // 2  # CPU: shared memory
    for part in ("gradients", "optimizer"):
        assert fsdp.parts[part] == -(-one.parts[part] // 2), part
    assert fsdp.parts["weights"] == one.parts["weights"]  # on a CPU each rank held the whole model once (loading)
    assert fsdp.parts["activations"] == one.parts["activations"]  # each rank runs its own micro-batch
    assert "per process (2 processes, gradients and optimizer split" in fsdp.describe()
    assert fsdp.as_json()["processes"] == 2 and fsdp.as_json()["sharded"] is True


def test_a_worker_fails_a_job_that_cannot_fit_its_memory_and_runs_one_that_does(
    redis, env, tiny_causal_lm: Path, tmp_path: Path
) -> None:
    worker = WorkerProcess({**env, "FTJOBS_JOB_MEMORY_MB": "8"}, tmp_path / "worker.log")
    try:
        big = request(tiny_causal_lm, env, LONG_ROWS, batch_size=8, max_seq_length=256)
        big = big.model_copy(update={"method": FullMethod()})
        too_big = submit(redis, env, big)
        small = submit(redis, env, request(tiny_causal_lm, env, batch_size=2))
        failed = wait_for(redis, too_big, worker=worker, timeout=300)
        done = wait_for(redis, small, worker=worker, timeout=300)
    finally:
        worker.stop()
    assert failed["status"] == "failed", failed
    error = failed["error"]
    assert error["code"] == "insufficient_memory" and error["param"] == "hyperparameters.batch_size", error
    assert "available" in error["message"] and "batch_size" in error["message"], error
    assert (failed.get("progress") or {}).get("step", 0) == 0  # it never trained
    assert not any("training" in e["message"] and "parameters" in e["message"] for e in events(redis, too_big))

    assert done["status"] == "succeeded", done
    found = done["resolved"]["memory_estimate"]
    assert found["device"] == "cpu" and found["available"] == 8 * 1024 * 1024
    assert found["total"] == sum(found["parts"].values()) <= found["available"]
    assert found["batch_size"] == 2 and found["trainable"] == done["resolved"]["trainable_parameters"]
    assert any(e["message"].startswith("memory preflight: ") for e in events(redis, small))
