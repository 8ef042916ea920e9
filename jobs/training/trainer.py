"""The Trainer we run, the collator that pads its batches and the callback that reports a run to Redis."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ftjobs.client.models import EventType, Hyperparameters, Progress
from ftjobs.jobs.data.examples import IGNORE_INDEX
from ftjobs.jobs.evaluation.metrics import eval_values
from ftjobs.jobs.evaluation.progress import PhaseProgress
from ftjobs.jobs.interrupts import INTERRUPTER, Cancelled
from ftjobs.jobs.report import Reporter, finite
from ftjobs.jobs.training import methods, sharding
from ftjobs.jobs.training.eval_loss import TokenLoss


class JobTrainer(Trainer):
    """transformers' Trainer plus job-level penalties (L1, EWC) added to the training loss only."""

    def __init__(self, *args: Any, penalties: list[Callable[[torch.nn.Module], torch.Tensor]] | None = None, **kw: Any):
        super().__init__(*args, **kw)
        self.penalties = penalties or []
        self.token_loss = TokenLoss()  # eval_loss per target token, the same on any batching (eval_loss.py)
        if self.model_accepts_loss_kwargs and not token_normalised_loss(self.model):
            # The model's loss is its batch's mean (T5, BERT's classification head): the Trainer must neither scale
            # it by the processes (a DDP gradient x N) nor skip dividing it by the accumulation steps.
            self.model_accepts_loss_kwargs = False

    def create_accelerator_and_postprocess(self) -> None:
        with sharding.sharding_on_cpu():  # FSDP ranks on CPU: accelerate would train them unsharded
            super().create_accelerator_and_postprocess()
        sharding.check_sharded(self)

    def train(self, *args: Any, **kw: Any) -> Any:
        ddp_after_evaluation(self)
        return super().train(*args, **kw)

    def evaluation_loop(self, *args: Any, metric_key_prefix: str = "eval", **kw: Any) -> Any:
        self.token_loss.start()
        try:
            output = super().evaluation_loop(*args, metric_key_prefix=metric_key_prefix, **kw)
            self.token_loss.finish(output.metrics, metric_key_prefix)
        finally:
            self.token_loss.rows = None  # outside an evaluation, compute_loss collects nothing
        return output

    # Checkpoints: the Trainer saves and loads them; some methods need a correction (jobs/training/methods.py).
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if state_dict is None:
            state_dict = methods.checkpoint_weights(self.model)  # adapter: not the frozen base
        with methods.base_folder(self.model):  # peft's save checks read the base model's folder
            super()._save(output_dir, state_dict)
        if self.args.should_save:
            methods.save_prompt_encoder(self.model, Path(output_dir or self.args.output_dir))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        methods.load_prompt_encoder(model if model is not None else self.model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        super()._load_best_model()
        if self.state.best_model_checkpoint:
            methods.load_prompt_encoder(self.model, self.state.best_model_checkpoint)

    def _issue_warnings_after_load(self, load_result: Any) -> None:
        frozen = set(methods.frozen_in_checkpoint(self.model, list(load_result.missing_keys)))
        if frozen:  # left out on purpose: only the keys a checkpoint should have held deserve a warning
            load_result = load_result._replace(missing_keys=[k for k in load_result.missing_keys if k not in frozen])
        super()._issue_warnings_after_load(load_result)

    class_weights: torch.Tensor | None = None  # per class id: weighted cross-entropy when training (data.balance)
    group_loss: Any = None  # data.debias: a jobs/training/debias.py GroupLoss over the batch's group ids

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False, **kw: Any) -> Any:
        groups = inputs.pop("group_ids", None)  # debias.GROUP_KEY: training examples only, never a model input
        if groups is not None and self.group_loss is not None and model.training:
            result = self._group_loss(model, inputs, groups, return_outputs, kw.get("num_items_in_batch"))
        elif self.class_weights is not None and model.training:
            result = self._weighted_loss(model, inputs, return_outputs)
        else:
            labels = inputs.get("labels")
            result = super().compute_loss(model, inputs, return_outputs=return_outputs, **kw)
            if not model.training and return_outputs and self.token_loss.rows is not None:
                self.token_loss.add(self.accelerator, model, result[1], labels)
        if not self.penalties or not model.training:  # evaluation losses stay comparable with and without
            return result
        loss, outputs = result if return_outputs else (result, None)
        penalty = sum(penalty(model) for penalty in self.penalties)
        # The Trainer divides the loss by the accumulation steps unless the model already normalised it over
        # the whole accumulated batch (num_items_in_batch); then the penalty, added per micro-batch, needs it.
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = self.model_accepts_loss_kwargs and kw.get("num_items_in_batch") is not None
        if scaled:
            penalty = penalty / getattr(self, "current_gradient_accumulation_steps", 1)
        loss = loss + penalty
        return (loss, outputs) if return_outputs else loss

    def _group_loss(
        self, model: Any, inputs: Any, groups: torch.Tensor, return_outputs: bool, num_items: Any
    ) -> Any:
        """Per-example cross-entropy (with class_weights, if any) combined over groups by `group_loss`."""
        outputs = model(**inputs)
        weight = None
        if self.class_weights is not None:
            weight = self.class_weights.to(device=outputs.logits.device, dtype=outputs.logits.dtype)
        losses = torch.nn.functional.cross_entropy(outputs.logits, inputs["labels"], weight=weight, reduction="none")
        loss = self.group_loss(losses, groups)
        # A micro-batch mean: divide by the accumulation steps where the Trainer will not (as for penalties below).
        scaled = getattr(self, "loss_is_scaled_for_ga", None)
        if scaled is None:
            scaled = self.model_accepts_loss_kwargs and num_items is not None
        if scaled:
            loss = loss / getattr(self, "current_gradient_accumulation_steps", 1)
        return (loss, outputs) if return_outputs else loss

    def _weighted_loss(self, model: Any, inputs: Any, return_outputs: bool) -> Any:
        """Cross-entropy with `class_weights` (classification): rare classes count more."""
        assert self.class_weights is not None
        outputs = model(**inputs)
        weight = self.class_weights.to(device=outputs.logits.device, dtype=outputs.logits.dtype)
        loss = torch.nn.functional.cross_entropy(outputs.logits, inputs["labels"], weight=weight)
        return (loss, outputs) if return_outputs else loss


def token_normalised_loss(model: torch.nn.Module | None) -> bool:
    """Whether the model's loss divides by the Trainer's `num_items_in_batch` (transformers' shared `loss_function`,
    e.g. causal LMs): the Trainer then scales it by the processes. A model that takes **kwargs but computes its own
    mean (`CrossEntropyLoss()`: T5, BART, sequence classification heads) does not, though the Trainer assumes it."""
    from transformers.trainer_utils import unwrap_peft_model

    try:
        return "loss_function" in inspect.getsource(type(unwrap_peft_model(model)).forward)
    except (OSError, TypeError):  # no source to read: keep the Trainer's own assumption
        return True


def ddp_after_evaluation(trainer: Trainer) -> None:
    """Before train() on DDP ranks: let it wrap the model in DDP even though an evaluation (the baseline) ran first.

    The Trainer's evaluate() prepares the bare model with accelerate's `prepare_model(evaluation_mode=True)`, which
    marks it `_is_accelerate_prepared` without wrapping it; train()'s `prepare` then returns it as it is, and every
    rank steps on its own gradients with no all-reduce (accelerate 1.16, transformers 5.25). Unmarked, it is wrapped.
    """
    from accelerate.utils import DistributedType

    accelerator, model = trainer.accelerator, trainer.model
    ddp = accelerator.multi_device or accelerator.distributed_type == DistributedType.MULTI_CPU  # not FSDP, DeepSpeed
    if ddp and trainer.model_wrapped is model and getattr(model, "_is_accelerate_prepared", False):
        del model._is_accelerate_prepared
        accelerator._models[:] = [m for m in accelerator._models if m is not model]  # prepare adds it again


class PadCollator:
    """Right-pads each list field of a batch: input_ids with the pad id, labels with -100, the rest with 0."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of  # 8 keeps GPU matmuls on tensor-core shapes

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {}
        for key in features[0]:
            values = [f[key] for f in features]
            if isinstance(values[0], list):
                # each field to its own longest: a seq2seq target is not as long as its source
                longest = max(len(v) for v in values)
                if self.multiple:
                    longest = -(-longest // self.multiple) * self.multiple
                pad = {"input_ids": self.pad_token_id, "labels": IGNORE_INDEX}.get(key, 0)
                batch[key] = torch.tensor([v + [pad] * (longest - len(v)) for v in values], dtype=torch.long)
            else:  # a class id per example
                batch[key] = torch.tensor(values, dtype=torch.long)
        return batch


class ReportCallback(TrainerCallback):
    """Progress + heartbeat (throttled), train/eval metric points and events, and the cancel check."""

    train_keys: tuple[str, ...] = ("loss", "learning_rate", "grad_norm")  # what a train log line records

    def __init__(self, reporter: Reporter, heartbeat_s: float, causal: bool) -> None:
        self.reporter = reporter
        self.heartbeat_s = heartbeat_s  # seconds between heartbeats (and between cancel checks in evaluation)
        self.causal = causal
        self.cancelled = False
        self.train_history: list[dict[str, Any]] = []  # {step, epoch, values} per logged train loss
        self.eval_history: list[dict[str, Any]] = []
        self._started = self._last_beat = time.monotonic()
        self._last_cancel_check = 0.0
        self._first_step = 0
        self.earlier_seconds = 0.0  # the earlier attempts' training seconds, up to the checkpoint this one resumed
        self.eval_label: str | None = None  # set by jobs/train.py around the baseline and final evaluations
        self.evaluating: PhaseProgress | None = None  # the evaluation under way, batch by batch
        self._eval_may_start = time.monotonic()  # an evaluation starts after this (a step end, `evaluation`)

    # ----------------------------------------------------------------- progress and cancel

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self._started = self._last_beat = time.monotonic()
        self._first_step = state.global_step  # > 0 when resumed from a checkpoint: the ETA counts this run's steps
        self.reporter.progress(self._progress(state))
        if sharding.sharded() and kw.get("model") is not None:  # what FSDP left on this (the reporting) rank
            share = sharding.shard_share(kw["model"])
            self.reporter.event(f"FSDP: rank 0 holds {share['share']:.1%} of the model's parameters", data=share)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        # Progress every step, in the same round trip as the cancel check (one Redis call per step):
        # a cancel stops within a step of the progress the user last saw. The heartbeat is throttled.
        now = self._eval_may_start = time.monotonic()
        beat = now - self._last_beat >= self.heartbeat_s
        if beat:
            self._last_beat = now
        if self.reporter.step(self._progress(state), heartbeat=beat):
            INTERRUPTER.acknowledge()  # stopping here, at a step end: no interrupt needed
            self.cancelled = True
            control.should_training_stop = True
        if self.cancelled:
            control.should_evaluate = control.should_save = False

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        if self.cancelled:  # the default flow asks for an end-of-epoch evaluation; a cancelled run skips it
            control.should_evaluate = control.should_save = False

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        self.reporter.progress(self._progress(state))

    def on_prediction_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        # Evaluations have no step end: look for a cancel every heartbeat interval and abort the evaluation.
        now = time.monotonic()
        if now - self._last_cancel_check >= self.heartbeat_s:
            self._last_cancel_check = now
            if self.reporter.cancel_requested():
                INTERRUPTER.acknowledge()
                self.cancelled = True
                raise Cancelled()
        # ... and say how far it is: "baseline evaluation: 3/8 batches, ETA 12s" (jobs/evaluation/progress.py)
        if self.evaluating is None:
            batches = kw.get("eval_dataloader")
            label = self.eval_label or f"evaluation at step {state.global_step}"
            total = len(batches) if batches is not None and hasattr(batches, "__len__") else None
            self.evaluating = PhaseProgress(
                self.reporter, "evaluating", label, "batches", total, self._progress(state), self._eval_may_start
            )
        self.evaluating.advance()

    @contextmanager
    def evaluation(self, label: str) -> Iterator[None]:
        """Name the evaluations run inside (`baseline evaluation`) in their progress events."""
        self.eval_label, self.evaluating = label, None
        self._eval_may_start = time.monotonic()
        try:
            yield
        finally:
            self.eval_label = self.evaluating = None

    def _progress(self, state: TrainerState) -> Progress:
        elapsed = time.monotonic() - self._started
        total = state.max_steps or None
        done = state.global_step - self._first_step
        eta = elapsed / done * (total - state.global_step) if total and done > 0 else None
        return Progress(
            step=state.global_step,
            total_steps=total,
            epoch=round(state.epoch or 0.0, 4),
            tokens_seen=int(state.num_input_tokens_seen or 0),
            elapsed_seconds=round(elapsed, 3),
            eta_seconds=round(eta, 3) if eta is not None else None,
            phase="training",
        )

    # ----------------------------------------------------------------- metrics

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        logs = logs or {}
        if "loss" not in logs or "train_loss" in logs:  # eval logs arrive via on_evaluate; skip the run summary
            return
        values = finite({k: logs[k] for k in self.train_keys if k in logs})
        self._record("train", state, values, self.train_history)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        if self.evaluating is not None:
            self.evaluating.finish()
            self.evaluating = None
        self._record("eval", state, eval_values(metrics or {}, self.causal), self.eval_history)

    def _record(self, split: str, state: TrainerState, values: dict[str, float], history: list) -> None:
        if not values:
            return
        epoch = round(state.epoch, 4) if state.epoch is not None else None
        history.append({"step": state.global_step, "epoch": epoch, "values": values})
        self.reporter.metric(split, state.global_step, epoch, values)  # type: ignore[arg-type]
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items() if "/" not in k)  # per-class: in data
        baseline = split == "eval" and state.global_step == 0
        label = "baseline eval (before training)" if baseline else f"{split} step {state.global_step}"
        self.reporter.event(
            f"{label}: {shown}",
            type=EventType.metrics,
            data={"split": split, "step": state.global_step, "epoch": epoch, "values": values},
        )

    @property
    def train_seconds(self) -> float:
        """Seconds of training behind the current weights: this attempt's since train begin, plus earlier ones'."""
        return self.earlier_seconds + time.monotonic() - self._started

    @property
    def train_losses(self) -> list[float]:
        return [h["values"]["loss"] for h in self.train_history if "loss" in h["values"]]


def training_arguments(
    hp: Hyperparameters,
    output_dir: Path,
    report_to: list[str],
    logging_steps: int,
    eval_strategy: str,
    stopping: dict[str, Any],
    saving: dict[str, Any],
    causal: bool,
) -> TrainingArguments:
    """The Trainer's arguments for a job: its hyperparameters, our logging/evaluation schedule and scratch saves."""
    bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()  # fp32 weights, bf16 matmuls
    return TrainingArguments(
        output_dir=str(output_dir),  # scratch: checkpoints before their upload, early stopping's best
        report_to=report_to or "none",
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        num_train_epochs=hp.n_epochs,
        max_steps=hp.max_steps or -1,
        learning_rate=float(hp.learning_rate),
        weight_decay=hp.weight_decay,
        warmup_steps=hp.warmup_ratio,  # a float in [0, 1) is a fraction of the total steps
        lr_scheduler_type=hp.lr_scheduler,
        max_grad_norm=hp.max_grad_norm,  # 0: no clipping
        seed=hp.seed,
        data_seed=hp.seed,
        logging_strategy="steps",
        logging_steps=logging_steps,
        eval_strategy=eval_strategy,
        eval_steps=hp.eval_steps,
        save_strategy=eval_strategy if stopping else "no",
        save_steps=hp.eval_steps or 500,  # early stopping saves where it evaluates; otherwise unused
        **{**stopping, **saving},  # saving's save_total_limit wins over early stopping's
        restore_callback_states_from_checkpoint=True,  # a resumed run's early stopping counts on where it was
        prediction_loss_only=causal,  # a causal LM's eval needs the loss, not vocabulary-sized logits
        label_names=["labels"],  # a PeftModel hides the forward signature the Trainer would read them from
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        disable_tqdm=True,
        bf16=bf16,
        dataloader_num_workers=0,  # no forks inside the work horse
        dataloader_pin_memory=torch.cuda.is_available(),
        train_sampling_strategy="group_by_length" if hp.group_by_length else "random",
        # use_reentrant=False: LoRA's frozen inputs need no requires_grad hack (transformers adds one anyway)
        activation_checkpointing=hp.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if hp.gradient_checkpointing else None,
        **sharding.sharding_arguments(),  # FSDP ranks (resources.sharding); {} otherwise
    )
