"""Generation-based evaluation: greedy outputs for validation rows, scored with BLEU, ROUGE and token accuracy.

The Trainer's evaluation gives the loss; this pass asks what the model actually *says*. It runs before
training (the baseline) and after, on at most `eval_generation_limit` validation rows, and keeps the
first `eval_samples` predictions (classification: predicted labels) for the qualitative review artifact.
The request's `eval_generation` options say how it decodes (batched.py generates the batches).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ftjobs.client.models import EvalGeneration, Task
from ftjobs.jobs.data.read import Row, label_of, source_target
from ftjobs.jobs.evaluation.batched import EXTRA_NEW_TOKENS as EXTRA_NEW_TOKENS  # tests budget with it
from ftjobs.jobs.evaluation.batched import generate_all
from ftjobs.jobs.evaluation.progress import PhaseProgress
from ftjobs.jobs.interrupts import Cancelled
from ftjobs.jobs.report import Reporter

CANCEL_CHECK_S = 2.0  # seconds between cancel checks during generation
_WORDS = re.compile(r"\w+|[^\w\s]", re.UNICODE)


class _AnyTextTokenizer:
    """ROUGE tokenizer for any script: rouge-score's default drops every non-ASCII character."""

    def tokenize(self, text: str) -> list[str]:
        return _WORDS.findall(text.lower())


def text_metrics(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU (sacrebleu, 0-100) and mean ROUGE-1/2/L F-measure (0-1) of predictions vs references."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if not references:
        return {}
    bleu = sacrebleu.corpus_bleu(list(predictions), [list(references)]).score
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_AnyTextTokenizer())
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for prediction, reference in zip(predictions, references, strict=True):
        for name, score in scorer.score(reference, prediction).items():
            sums[name] += score.fmeasure
    return {"bleu": float(bleu), **{k: v / len(references) for k, v in sums.items()}}


@dataclass
class Item:
    """One validation row, ready to generate for: the prompt's token ids and the text it should produce."""

    shown: Any  # what eval_samples.jsonl shows as the input (a prompt, a source, a conversation, a text)
    prompt_ids: list[int]
    reference: str
    reference_ids: list[int] = field(default_factory=list)


def _causal_item(row: Row, tokenizer: Any, max_seq_length: int) -> Item | None:
    d = row.data
    if isinstance(d.get("prompt"), str) and isinstance(d.get("completion"), str):
        prompt_ids = list(tokenizer(d["prompt"])["input_ids"])
        shown, reference = d["prompt"], d["completion"]
    elif isinstance(d.get("messages"), list):
        msgs = d["messages"]
        last = max((i for i, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
        if last is None:
            return None
        conversation = [{"role": m["role"], "content": m["content"]} for m in msgs[:last]]
        text = tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        prompt_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        shown, reference = conversation, msgs[last]["content"]
    else:  # plain text rows have no prompt to answer
        return None
    reference_ids = list(tokenizer(reference, add_special_tokens=False)["input_ids"])
    if len(prompt_ids) >= max_seq_length:
        return None
    return Item(shown, prompt_ids, reference, reference_ids)


def _seq2seq_item(row: Row, tokenizer: Any, max_seq_length: int) -> Item:
    source, target = source_target(row)
    prompt_ids = list(tokenizer(source, truncation=True, max_length=max_seq_length)["input_ids"])
    return Item(source, prompt_ids, target, list(tokenizer(target, add_special_tokens=False)["input_ids"]))


class Evaluator:
    """Generates (or classifies) for the first validation rows; `run` returns metrics and keeps predictions."""

    def __init__(
        self,
        task: Task,
        tokenizer: Any,
        rows: Sequence[Row],
        *,
        limit: int,
        samples: int,
        max_seq_length: int,
        labels: Sequence[str] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        options: EvalGeneration | None = None,
    ) -> None:
        self.task, self.tokenizer, self.labels = task, tokenizer, labels
        self.options = options if options is not None else EvalGeneration()
        self.limit, self.samples, self.max_seq_length = limit, samples, max_seq_length
        self.should_stop = should_stop
        self.rows = list(rows)
        self.items: list[Item] = []
        if task != Task.classification:
            build = _seq2seq_item if task == Task.seq2seq else _causal_item
            wanted = max(limit, samples)
            for row in self.rows:
                if len(self.items) >= wanted:
                    break
                item = build(row, tokenizer, max_seq_length)
                if item is not None:
                    self.items.append(item)
        self.predictions: dict[str, list[str]] = {}  # "baseline" / "final" -> predictions of the sampled rows
        self._last_check = time.monotonic()
        self.on_item: Callable[[int], None] | None = None  # called with n after each n predictions (progress)

    @property
    def active(self) -> bool:
        if self.task == Task.classification:
            return self.samples > 0 and bool(self.rows)
        return bool(self.items) and (self.limit > 0 or self.samples > 0)

    def run(self, model: Any, stage: str, cancelled: type[Exception]) -> dict[str, float]:
        """Predict for the rows; store the sampled predictions under `stage`; metrics for causal_lm/seq2seq."""
        if not self.active:
            return {}
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if self.task == Task.classification:
                    self.predictions[stage] = self._classify(model, cancelled)
                    return {}
                outputs = generate_all(
                    model,
                    self.tokenizer,
                    self.items,
                    self.options,
                    max_seq_length=self.max_seq_length,
                    seq2seq=self.task == Task.seq2seq,
                    before_batch=lambda: self._check(cancelled, every_call=True),
                    after_batch=self._tick,
                )
                accuracy = self._token_accuracy(model, self.items[: self.limit])
        finally:
            model.train(was_training)
        self.predictions[stage] = outputs[: self.samples]
        scored = self.items[: self.limit]
        metrics = text_metrics(outputs[: len(scored)], [i.reference for i in scored]) if scored else {}
        if accuracy is not None:
            metrics["token_accuracy"] = accuracy
        return metrics

    def echo(self) -> dict[str, Any] | None:
        """results.generation: the options that produced the generation scores (None: nothing generated)."""
        if self.task == Task.classification or not self.active:
            return None
        return {**self.options.model_dump(), "examples": len(self.items[: self.limit])}

    def sample_rows(self) -> list[dict[str, Any]]:
        """eval_samples.jsonl rows: input, reference, and the prediction before and after training."""
        out = []
        if self.task == Task.classification:
            for i, row in enumerate(self.rows[: self.samples]):
                entry: dict[str, Any] = {"text": row.data.get("text"), "label": label_of(row)}
                for stage, predicted in self.predictions.items():
                    entry["predicted_label" if stage == "final" else f"{stage}_predicted_label"] = predicted[i]
                out.append(entry)
            return out
        for i, item in enumerate(self.items[: self.samples]):
            entry = {"input": item.shown, "reference": item.reference}
            for stage, predicted in self.predictions.items():
                entry["prediction" if stage == "final" else f"{stage}_prediction"] = predicted[i]
            out.append(entry)
        return out

    # ----------------------------------------------------------------- helpers

    def _check(self, cancelled: type[Exception], every_call: bool = False) -> None:
        """Raise `cancelled` on a stop request; read at most every CANCEL_CHECK_S unless `every_call` (a batch)."""
        now = time.monotonic()
        if every_call or now - self._last_check >= CANCEL_CHECK_S:
            self._last_check = now
            if self.should_stop():
                raise cancelled()

    def _token_accuracy(self, model: Any, items: Sequence[Item]) -> float | None:
        """Teacher-forced next-token accuracy on the reference tokens (+ EOS): how often argmax is right."""
        eos = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        device = next(model.parameters()).device
        right = total = 0
        for item in items:
            target = (item.reference_ids + eos)[: self.max_seq_length]
            if self.task == Task.seq2seq:
                labels = torch.tensor([target], device=device)
                logits = model(input_ids=torch.tensor([item.prompt_ids], device=device), labels=labels).logits[0]
                predicted = logits.argmax(-1)
            else:
                ids = (item.prompt_ids + target)[: self.max_seq_length]
                target = ids[len(item.prompt_ids) :]
                if not target:
                    continue
                logits = model(input_ids=torch.tensor([ids], device=device)).logits[0]
                # position t predicts token t+1: the reference starts at len(prompt)
                predicted = logits[len(item.prompt_ids) - 1 : len(ids) - 1].argmax(-1)
            right += int((predicted.cpu() == torch.tensor(target)).sum())
            total += len(target)
        return right / total if total else None

    def _classify(self, model: Any, cancelled: type[Exception]) -> list[str]:
        assert self.labels is not None
        device = next(model.parameters()).device
        predicted = []
        for row in self.rows[: self.samples]:
            self._check(cancelled)
            enc = self.tokenizer(row.data["text"], truncation=True, max_length=self.max_seq_length, return_tensors="pt")
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits[0]
            predicted.append(self.labels[int(logits.argmax(-1))])
            self._tick()
        return predicted

    def units(self) -> int:
        """How many predictions `run` makes (`on_item` gets them in batches)."""
        return len(self.rows[: self.samples]) if self.task == Task.classification else len(self.items)

    def _tick(self, n: int = 1) -> None:
        if self.on_item is not None:
            self.on_item(n)


def generation_eval(evaluator: Evaluator, trainer: Any, reporter: Reporter, stage: str) -> dict[str, float]:
    """Run the generation pass; its metrics also become an eval metric point at the current step."""
    if not evaluator.active:
        return {}
    progress = PhaseProgress(reporter, "evaluating", f"{stage} generation", "examples", evaluator.units()).start()
    evaluator.on_item = progress.advance
    try:
        values = evaluator.run(trainer.model, stage, Cancelled)
    finally:
        evaluator.on_item = None
    progress.finish()
    if values:
        step = trainer.state.global_step
        reporter.metric("eval", step, round(trainer.state.epoch or 0.0, 4), values)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
        reporter.event(f"{stage} generation ({len(evaluator.items[: evaluator.limit])} examples): {shown}")
    return values
