"""Augmenting the training split: EDA word edits, counterfactual term swaps, and model rewrites (paraphrase,
back-translation through `jobs/data/paraphrase.py`). Only training rows are augmented, after the split."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ftjobs.client.models import DataOptions
from ftjobs.jobs.data.clean import map_text
from ftjobs.jobs.data.read import Row

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
_WORD = re.compile(r"\b\w+\b")


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


def augment_rows(rows: list[Row], options: DataOptions, rng: random.Random) -> list[Row]:
    out = list(rows)
    pairs = options.term_pairs or DEFAULT_TERM_PAIRS
    for r in rows:
        if "eda" in options.augment:
            for _ in range(options.augment_copies):
                out.append(map_text(r, lambda t: eda(t, rng, options.augment_strength), inputs_only=True))
        if "swap_terms" in options.augment:
            swapped = map_text(r, lambda t: swap_terms(t, pairs))
            if swapped.data != r.data:  # only rows that mention a term get a counterfactual copy
                out.append(swapped)
    return out


def augment_model_path(options: DataOptions, param: str, model_roots: tuple[Path, ...]) -> Path:
    """The local folder of `data.augment_model` / `data.augment_back_model`; ModelNotFound naming that field."""
    from ftjobs.jobs.data.inputs import resolve_model_path
    from ftjobs.jobs.errors import ModelNotFound

    try:
        return resolve_model_path(str(getattr(options, param)), model_roots)
    except ModelNotFound as e:
        raise ModelNotFound(e.message.replace("at ", f"({param}) at ", 1), param=f"data.{param}") from None


def model_augment(
    method: str, rows: list[Row], options: DataOptions, seed: int, model_roots: tuple[Path, ...]
) -> tuple[list[Row], dict[str, Any]]:
    """paraphrase (augment_model) or back_translate (augment_model, then augment_back_model back)."""
    from ftjobs.jobs.data.paraphrase import Generator, rewrite_rows
    from ftjobs.jobs.errors import InvalidModel

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
