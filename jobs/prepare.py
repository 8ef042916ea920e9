"""Data preparation between reading the rows and tokenizing them: clean, dedup, split, balance, augment.

Every step is a plain function over `Row`s and is reported with its rows in and out, so a job's
`results["data"]` (and the `data_report.json` artifact) says exactly what happened to the data. The
order matters: clean and dedup the training file, split off the validation rows (seeded, stratified),
then augment and balance the training split only, so no augmented copy of a row can leak into
validation. With default `DataOptions` nothing runs and the rows pass through untouched.
"""

from __future__ import annotations

import json
import random
import re
import string
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ftjobs.client.models import DEDUP_THRESHOLD, DataOptions, Task
from ftjobs.jobs.data import Row, split_rows

TEXT_FIELDS = ("text", "prompt", "completion", "source", "target")
MODEL_AUGMENT = ("paraphrase", "back_translate")  # augmentation that generates with a model
# swap_terms default: gendered English pairs, swapped both ways (her -> him: the his/her ambiguity is ignored)
DEFAULT_TERM_PAIRS = (
    ("he", "she"),
    ("him", "her"),
    ("his", "hers"),
    ("himself", "herself"),
    ("man", "woman"),
    ("men", "women"),
    ("boy", "girl"),
    ("boys", "girls"),
    ("father", "mother"),
    ("son", "daughter"),
    ("brother", "sister"),
    ("husband", "wife"),
    ("king", "queen"),
    ("mr", "mrs"),
)
_NEAR = re.compile(rf"[\s\d{re.escape(string.punctuation)}]+")
_WORD = re.compile(r"\b\w+\b")
_LETTERS = re.compile(r"[^\W\d_]+")  # runs of letters: words without the digits and punctuation near_key drops
SHINGLE_CHARS = 5  # dedup minhash: character 5-grams (measured on SMS spam against word 2-grams: see shingles)
MINHASH_PERM = 128
MINHASH_SEED = 1  # fixed, not the job's seed: the same file loses the same rows whatever the training seed


@dataclass
class PreparedData:
    train: list[Row]
    validation: list[Row] | None  # None: no validation file and no split made here (build_datasets splits)
    report: dict[str, Any] = field(default_factory=dict)
    class_weights: dict[str, float] | None = None  # label -> loss weight (balance="class_weights")
    notes: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- row helpers


def _copy(row: Row, data: dict[str, Any]) -> Row:
    return Row(row.line, data, row.file, row.unit)


def _map_text(row: Row, fn: Callable[[str], str], inputs_only: bool = False) -> Row:
    """Apply `fn` to the row's text fields (inputs only: not completions, targets or assistant turns)."""
    d = dict(row.data)
    for name in TEXT_FIELDS:
        if inputs_only and name in ("completion", "target"):
            continue
        if isinstance(d.get(name), str):
            d[name] = fn(d[name])
    if isinstance(d.get("messages"), list):
        d["messages"] = [
            {**m, "content": fn(m["content"])}
            if isinstance(m, dict)
            and isinstance(m.get("content"), str)
            and not (inputs_only and m.get("role") == "assistant")
            else m
            for m in d["messages"]
        ]
    return _copy(row, d)


def content(row: Row) -> str:
    """All the row's text, for length filters and near-duplicate keys."""
    d = row.data
    parts = [d[n] for n in TEXT_FIELDS if isinstance(d.get(n), str)]
    if isinstance(d.get("messages"), list):
        parts += [m["content"] for m in d["messages"] if isinstance(m, dict) and isinstance(m.get("content"), str)]
    return "\n".join(parts)


def label(row: Row) -> str:
    return str(row.data.get("label"))


def normalize_text(text: str) -> str:
    """NFKC, then every whitespace run becomes one space, trimmed."""
    return " ".join(unicodedata.normalize("NFKC", text).split())


def near_key(text: str) -> str:
    """Lowercase, without punctuation, digits or whitespace: what near-duplicates share."""
    return _NEAR.sub("", text.lower())


def shingles(text: str, n: int = SHINGLE_CHARS) -> set[str]:
    """Character n-grams of the lowercased words (no digits or punctuation, one space between them).

    Character rather than word shingles: in short texts (SMS are 10-20 words) one changed word removes two
    of ~10 word 2-grams (Jaccard ~0.65), but only ~the word's length of ~60 character 5-grams (~0.75-0.85),
    and typos, truncations and missing spaces ("DeliveredTomorrow") leave most 5-grams intact. A text shorter
    than n is one shingle, so short rows still match their exact (normalised) copies; no words, no shingles.
    """
    s = " ".join(_LETTERS.findall(text.lower()))
    if len(s) <= n:
        return {s} if s else set()
    return {s[i : i + n] for i in range(len(s) - n + 1)}


def is_valid(row: Row, task: Task) -> bool:
    d = row.data
    if task == Task.classification:
        lab = d.get("label")
        ok_label = isinstance(lab, int) and not isinstance(lab, bool) or isinstance(lab, str) and lab.strip() != ""
        return isinstance(d.get("text"), str) and bool(d["text"].strip()) and ok_label
    if "messages" in d:
        msgs = d["messages"]
        return (
            isinstance(msgs, list)
            and all(isinstance(m, dict) and isinstance(m.get("content"), str) for m in msgs)
            and any(m.get("role") == "assistant" and m["content"].strip() for m in msgs)
        )
    if "prompt" in d or "completion" in d:
        return isinstance(d.get("prompt"), str) and isinstance(d.get("completion"), str) and bool(d["completion"])
    if task == Task.seq2seq or "source" in d or "target" in d:
        return all(isinstance(d.get(k), str) and d[k].strip() for k in ("source", "target"))
    return isinstance(d.get("text"), str) and bool(d["text"].strip())


# ----------------------------------------------------------------------------- augmentation


def eda(text: str, rng: random.Random, strength: float) -> str:
    """One EDA variant (Wei & Zou 2019, without WordNet): random swap, deletion or insertion of words."""
    words = text.split()
    if len(words) < 2:
        return text
    n = max(1, round(strength * len(words)))
    op = rng.choice(("swap", "delete", "insert"))
    if op == "swap":
        for _ in range(n):
            i, j = rng.sample(range(len(words)), 2)
            words[i], words[j] = words[j], words[i]
    elif op == "delete":
        keep = [w for w in words if rng.random() >= strength]
        words = keep or [rng.choice(words)]
    else:  # insert a word of the sentence at a random place (synonyms would need a thesaurus)
        for _ in range(n):
            words.insert(rng.randrange(len(words) + 1), rng.choice(words))
    return " ".join(words)


def swap_terms(text: str, pairs: Sequence[tuple[str, str]]) -> str:
    """Swap each term with its pair (whole words, case kept for the first letter)."""
    mapping: dict[str, str] = {}
    for a, b in pairs:
        mapping.setdefault(a.lower(), b.lower())
        mapping.setdefault(b.lower(), a.lower())

    def repl(m: re.Match[str]) -> str:
        word = m.group(0)
        other = mapping.get(word.lower())
        if other is None:
            return word
        if word.isupper() and len(word) > 1:
            return other.upper()
        return other.capitalize() if word[0].isupper() else other

    return _WORD.sub(repl, text)


# ----------------------------------------------------------------------------- the pipeline


class _Steps:
    def __init__(self) -> None:
        self.steps: list[dict[str, Any]] = []

    def add(self, step: str, rows_in: int, rows_out: int, **details: Any) -> None:
        self.steps.append({"step": step, "rows_in": rows_in, "rows_out": rows_out, **details})


def prepare_data(
    task: Task,
    options: DataOptions,
    train: list[Row],
    validation: list[Row] | None,
    validation_split: float,
    seed: int,
    model_roots: tuple[Path, ...] = (),
) -> PreparedData:
    """Run the steps `options` asks for; with default options return the rows untouched.

    `model_roots`: where paraphrase/back_translate find `options.augment_model`/`augment_back_model`.
    """
    if not options.active:
        return PreparedData(train, validation)
    classification = task == Task.classification
    steps = _Steps()
    rng = random.Random(seed)
    labels_before = dict(Counter(label(r) for r in train)) if classification else None

    if options.normalize_text:
        changed = 0
        out = []
        for r in train:
            new = _map_text(r, normalize_text)
            changed += new.data != r.data
            out.append(new)
        steps.add("normalize_text", len(train), len(out), rows_changed=changed)
        train = out
        if validation is not None:
            validation = [_map_text(r, normalize_text) for r in validation]
    if options.drop_invalid:
        kept = [r for r in train if is_valid(r, task)]
        steps.add("drop_invalid", len(train), len(kept), lines=[r.line for r in train if not is_valid(r, task)][:20])
        train = kept
    if options.min_chars is not None or options.max_chars is not None:
        lo, hi = options.min_chars or 0, options.max_chars or 2**62
        kept = [r for r in train if lo <= len(content(r)) <= hi]
        steps.add("length_filter", len(train), len(kept), min_chars=options.min_chars, max_chars=options.max_chars)
        train = kept
    if classification and options.normalize_labels:
        train, validation, merged = _normalize_labels(train, validation)
        steps.add("normalize_labels", len(train), len(train), merged=merged)
    if options.dedup != "none":
        n = len(train)
        train = _dedup(train, lambda r: json.dumps(r.data, sort_keys=True, ensure_ascii=False))
        steps.add("dedup_exact", n, len(train))
        if options.dedup in ("near", "minhash"):
            n = len(train)
            train = _dedup(train, lambda r: near_key(content(r)) + "\x00" + (label(r) if classification else ""))
            steps.add("dedup_near", n, len(train))
        if options.dedup == "minhash":
            n, threshold = len(train), options.dedup_threshold or DEDUP_THRESHOLD
            train, pairs = dedup_minhash(train, threshold, by_label=classification)
            examples = [[kept.line, dropped.line] for kept, dropped in pairs[:5]]
            steps.add(
                "dedup_minhash",
                n,
                len(train),
                threshold=threshold,
                shingles=f"character {SHINGLE_CHARS}-grams",
                num_perm=MINHASH_PERM,
                examples=examples,  # [kept line, dropped line]
            )
    if classification and options.drop_conflicting:
        by_text: dict[str, set[str]] = defaultdict(set)
        for r in train:
            by_text[str(r.data.get("text"))].add(label(r))
        kept = [r for r in train if len(by_text[str(r.data.get("text"))]) == 1]
        conflicting = sum(1 for labels in by_text.values() if len(labels) > 1)
        steps.add("drop_conflicting", len(train), len(kept), texts=conflicting)
        train = kept

    # Split before augmenting or resampling: nothing derived from a validation row may be trained on.
    notes: list[str] = []
    split: dict[str, Any] | None = None
    if validation is None:
        stratify = [label(r) for r in train] if classification else None
        n = len(train)
        train, validation, note = split_rows(train, validation_split, seed, stratify)
        notes.append(note)
        split = {"seed": seed, "fraction": validation_split, "train": len(train), "validation": len(validation)}
        steps.add("split", n, len(train), validation=len(validation))

    originals = train
    if {"eda", "swap_terms"} & set(options.augment):
        n = len(train)
        train = _augment(train, options, rng)
        steps.add("augment", n, len(train), methods=[m for m in options.augment if m in ("eda", "swap_terms")])
    for method in MODEL_AUGMENT:
        if method in options.augment:
            added, details = _model_augment(method, originals, options, seed, model_roots)
            steps.add(method, len(train), len(train) + len(added), rows_added=len(added), **details)
            train = train + added
    class_weights = None
    if classification and options.balance != "none":
        n = len(train)
        before = dict(Counter(label(r) for r in train))
        if options.balance == "class_weights":
            total, k = sum(before.values()), len(before)
            class_weights = {lab: round(total / (k * c), 6) for lab, c in sorted(before.items())}
        else:
            train = _resample(train, options.balance, rng)
        steps.add(
            f"balance_{options.balance}",
            n,
            len(train),
            before=before,
            after=dict(Counter(label(r) for r in train)),
            **({"class_weights": class_weights} if class_weights else {}),
        )
    report: dict[str, Any] = {"options": options.model_dump(mode="json"), "steps": steps.steps}
    if classification:
        report["labels_before"] = labels_before
        report["labels_after"] = dict(Counter(label(r) for r in train))
    if split is not None:
        report["split"] = split
    return PreparedData(train, validation, report, class_weights, notes)


def _normalize_labels(train: list[Row], validation: list[Row] | None) -> tuple[list[Row], list[Row] | None, dict]:
    """Labels equal after strip + casefold become the most frequent spelling (strings only)."""
    spellings: dict[str, Counter[str]] = defaultdict(Counter)
    for r in train:
        if isinstance(r.data.get("label"), str):
            spellings[r.data["label"].strip().casefold()][r.data["label"].strip()] += 1
    canonical = {key: counts.most_common(1)[0][0] for key, counts in spellings.items()}
    merged = {canonical[k]: sorted(c) for k, c in spellings.items() if len(c) > 1}

    def fix(rows: list[Row]) -> list[Row]:
        out = []
        for r in rows:
            lab = r.data.get("label")
            if isinstance(lab, str) and lab.strip().casefold() in canonical:
                r = _copy(r, {**r.data, "label": canonical[lab.strip().casefold()]})
            out.append(r)
        return out

    return fix(train), fix(validation) if validation is not None else None, merged


def _dedup(rows: list[Row], key: Callable[[Row], str]) -> list[Row]:
    seen: set[str] = set()
    out = []
    for r in rows:
        k = key(r)
        if k not in seen:
            seen.add(k)
            out.append(r)
    return out


def dedup_minhash(rows: list[Row], threshold: float, by_label: bool) -> tuple[list[Row], list[tuple[Row, Row]]]:
    """Drop each row whose MinHash-estimated Jaccard similarity to an earlier kept row is >= threshold.

    Returns the kept rows and (kept, dropped) pairs, the kept row being the earliest match. `by_label`: rows
    are only compared with rows of their own label (as dedup near). Rows without words are always kept.
    """
    from datasketch import MinHash, MinHashLSH  # the worker extra; ~0.7 s to import (scipy)

    # The LSH bands only propose candidates, each then checked against `threshold`. Banded at `threshold`
    # itself they miss many pairs just above it (sms_spam at 0.8: 84 of the 95 found by comparing all pairs);
    # banded 0.2 lower they found all 95 (18 bands of 7 instead of 9 of 13). 100k SMS-like rows: ~15 s, ~7 KB
    # a kept row (~550 MB).
    index_threshold = max(0.3, threshold - 0.2)
    indexes: dict[str, tuple[MinHashLSH, dict[int, MinHash]]] = {}
    shingled = ([s.encode() for s in shingles(content(r))] for r in rows)  # lazily: a row's shingles are ~5 KB
    hashes = MinHash.generator(shingled, num_perm=MINHASH_PERM, seed=MINHASH_SEED)
    kept: list[Row] = []
    pairs: list[tuple[Row, Row]] = []
    for i, (row, minhash) in enumerate(zip(rows, hashes, strict=True)):
        if minhash.is_empty():  # no words
            kept.append(row)
            continue
        group = label(row) if by_label else ""
        if group not in indexes:
            indexes[group] = (MinHashLSH(threshold=index_threshold, num_perm=MINHASH_PERM), {})
        lsh, seen = indexes[group]
        match = min((j for j in lsh.query(minhash) if minhash.jaccard(seen[j]) >= threshold), default=None)
        if match is None:
            lsh.insert(i, minhash)
            seen[i] = minhash
            kept.append(row)
        else:
            pairs.append((rows[match], row))
    return kept, pairs


def _augment(rows: list[Row], options: DataOptions, rng: random.Random) -> list[Row]:
    out = list(rows)
    pairs = options.term_pairs or DEFAULT_TERM_PAIRS
    for r in rows:
        if "eda" in options.augment:
            for _ in range(options.augment_copies):
                out.append(_map_text(r, lambda t: eda(t, rng, options.augment_strength), inputs_only=True))
        if "swap_terms" in options.augment:
            swapped = _map_text(r, lambda t: swap_terms(t, pairs))
            if swapped.data != r.data:  # only rows that mention a term get a counterfactual copy
                out.append(swapped)
    return out


def augment_model_path(options: DataOptions, param: str, model_roots: tuple[Path, ...]) -> Path:
    """The local folder of `data.augment_model` / `data.augment_back_model`; ModelNotFound naming that field."""
    from ftjobs.jobs.errors import ModelNotFound
    from ftjobs.jobs.inputs import resolve_model_path

    try:
        return resolve_model_path(str(getattr(options, param)), model_roots)
    except ModelNotFound as e:
        raise ModelNotFound(e.message.replace("at ", f"({param}) at ", 1), param=f"data.{param}") from None


def _model_augment(
    method: str, rows: list[Row], options: DataOptions, seed: int, model_roots: tuple[Path, ...]
) -> tuple[list[Row], dict[str, Any]]:
    """paraphrase (augment_model) or back_translate (augment_model, then augment_back_model back)."""
    from ftjobs.jobs.errors import InvalidModel
    from ftjobs.jobs.paraphrase import Generator, rewrite_rows

    params = ["augment_model"] + (["augment_back_model"] if method == "back_translate" else [])
    paths = [augment_model_path(options, param, model_roots) for param in params]

    def stage(path: Path) -> Callable[[Sequence[str]], list[str]]:
        def generate(batch: Sequence[str]) -> list[str]:  # one model at a time: loaded, run, freed
            try:
                generator = Generator(path, options.augment_prompt, options.augment_temperature, seed)
            except (OSError, ValueError, KeyError) as e:
                param = params[paths.index(path)]
                message = f"could not load {param} {path.name}: {type(e).__name__}: {e}"
                raise InvalidModel(message, param=f"data.{param}") from None
            with generator:
                return generator(batch)

        return generate

    added, details = rewrite_rows(rows, [stage(p) for p in paths], options.augment_max_rows, seed)
    return added, {"models": [p.name for p in paths], "max_rows": options.augment_max_rows, **details}


def _resample(rows: list[Row], how: str, rng: random.Random) -> list[Row]:
    """Seeded over- or undersampling to equal class counts (order: by class, then shuffled)."""
    by_label: dict[str, list[Row]] = defaultdict(list)
    for r in rows:
        by_label[label(r)].append(r)
    counts = [len(v) for v in by_label.values()]
    target = max(counts) if how == "oversample" else min(counts)
    out: list[Row] = []
    for lab in sorted(by_label):
        group = by_label[lab]
        if len(group) >= target:
            out += group if how == "oversample" else rng.sample(group, target)
        else:
            out += group + [rng.choice(group) for _ in range(target - len(group))]
    rng.shuffle(out)
    return out


def split_jsonl(rows: list[Row]) -> str:
    """Rows as JSONL (the split artifacts), each with the line it came from."""
    return "".join(json.dumps({"line": r.line, **r.data}, ensure_ascii=False) + "\n" for r in rows)


def write_report(out: Path, prepared: PreparedData) -> list[str]:
    """`data_report.json` and, when the split was made here, `split/train.jsonl` + `split/validation.jsonl`."""
    (out / "split").mkdir(parents=True, exist_ok=True)
    names = ["data_report.json"]
    (out / "data_report.json").write_text(json.dumps(prepared.report, indent=2, sort_keys=True) + "\n")
    if "split" in prepared.report:
        (out / "split" / "train.jsonl").write_text(split_jsonl(prepared.train))
        (out / "split" / "validation.jsonl").write_text(split_jsonl(prepared.validation or []))
        names += ["split/train.jsonl", "split/validation.jsonl"]
    else:
        (out / "split").rmdir()
    return names


def step_messages(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """One event per step: `data: dedup_exact: 5574 -> 5171 rows`."""
    return [(f"data: {s['step']}: {s['rows_in']} -> {s['rows_out']} rows", s) for s in report.get("steps", [])]


def token_report(examples: Sequence[dict[str, Any]], max_seq_length: int) -> dict[str, Any]:
    """Token lengths of tokenized examples: quantiles, a power-of-two histogram, how many hit max_seq_length."""
    lengths = sorted(len(e["input_ids"]) for e in examples)
    if not lengths:
        return {"examples": 0}
    histogram: Counter[str] = Counter()
    for n in lengths:
        bucket = 8
        while bucket < n:
            bucket *= 2
        histogram[f"<={min(bucket, max_seq_length)}"] += 1
    return {
        "examples": len(lengths),
        "min": lengths[0],
        "median": lengths[len(lengths) // 2],
        "p95": lengths[min(len(lengths) - 1, -(-95 * len(lengths) // 100) - 1)],
        "max": lengths[-1],
        "max_seq_length": max_seq_length,
        "truncated": sum(n >= max_seq_length for n in lengths),  # at the limit: cut (or exactly as long)
        "histogram": dict(histogram),
    }
