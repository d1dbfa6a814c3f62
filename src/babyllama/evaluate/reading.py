"""The BabyLM reading task (2025/2026): how much a model's surprisal adds to predicting human reading times.

Data: the pipeline's ``reading_data.csv`` (de Varda et al. 2023, 205 sentences), one row per word with
columns ``item`` (the text before the word), ``word``, ``prev_item`` / ``prev_word`` (the same for the
word before; empty on a sentence's first word), the eye-tracking measures ``RTfirstfix``, ``RTfirstpass``,
``RTgopast``, ``RTrightbound``, ``self_paced_reading_time``, and the predictors ``Subtlex_log10``,
``length``, ``context_length``, ``prev_length``. Empty cells are missing values.

Surprisal, as the official causal scorer computes it: ``item`` is tokenized with the tokenizer's own
special tokens and the model's last position gives p(first token of ``word``); each further token of the
word is scored after appending the decoded previous token to the text and tokenizing it again; the
word's surprisal is -log of the product. (The texts never depend on the model, so we build every query
first and score them in batches; the numbers are those of one query at a time.) Like the official code we
never truncate: a query longer than a model with learned positions can read stops the run with one line
naming the data line; a rotary model reads on and the result's notes say so.

Scores (× 100, as the pipeline prints them): for each eye-tracking measure, ordinary least squares of
the measure on frequency, length, context length and their pairwise interactions, without and with the
surprisal, each on the rows where its own columns are present; the score is the gain in R² as a share
of what was left to explain, (R²_model − R²_base) / (1 − R²_base). Eye tracking: the mean over the four
``RT`` measures. Self-paced reading: the same with the previous word's length and surprisal (and all
pairwise interactions) in both models (one-word spillover). Headline: our mean of the two (the pipeline
prints them apart).

Result JSON: ``{"task": "reading", "model", "data", "n_words", "eye_tracking": float, "self_paced": float,
"per_measure": {measure: float}, "headline": float, "notes": [str]}``.
"""

from __future__ import annotations

import csv
import math
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import torch

from babyllama.errors import UserError
from babyllama.evaluate.blimp import reads_past_positions
from babyllama.evaluate.formats import load_causal_lm, max_positions
from babyllama.hf_logging import quiet_transformers
from babyllama.runtime import resolve_device

EYE = ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound")
SELF_PACED = "self_paced_reading_time"
BASE = ("Subtlex_log10", "length", "context_length")
SPILLOVER = (*BASE, "prev_length", "prev_pred")
NUMERIC = (*EYE, SELF_PACED, *BASE, "prev_length")
TEXT = ("item", "word", "prev_item", "prev_word")


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The CSV's rows: text columns as strings (an empty ``item`` reads "None", as pandas' fillna does upstream;
    an empty ``prev_item`` is None), numeric columns as floats (empty: NaN)."""
    path = Path(path).expanduser()
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = [c for c in (*TEXT, *NUMERIC) if c not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path}: line 1: missing column {missing[0]!r}, not the BabyLM reading_data.csv format")
            rows = [_row(path, lineno, raw) for lineno, raw in enumerate(reader, start=2)]
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def _row(path: Path, lineno: int, raw: dict[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {"item": raw["item"] or "None", "word": raw["word"],
                           "prev_item": raw["prev_item"] or None, "prev_word": raw["prev_word"]}
    if not row["word"]:
        raise UserError(f"{path}: line {lineno}: field 'word' is empty")
    if row["prev_item"] is not None and not row["prev_word"]:
        raise UserError(f"{path}: line {lineno}: field 'prev_word' is empty but 'prev_item' is set")
    for key in NUMERIC:
        text = (raw[key] or "").strip()
        try:
            row[key] = float(text) if text else math.nan
        except ValueError:
            raise UserError(f"{path}: line {lineno}: field {key!r} must be a number, got {raw[key]!r}") from None
    return row


def _queries(tokenizer: Any, context: str, word: str) -> list[tuple[list[int], int]]:
    """(input ids, target id) of every token of ``word`` after ``context``, built as the official code builds them."""
    target = tokenizer(word, add_special_tokens=False)["input_ids"]
    if not target:
        raise UserError(f"the tokenizer turns the word {word!r} into no tokens")
    out = [(tokenizer(context)["input_ids"], target[0])]
    text = context + tokenizer.decode(target[0])
    for token in target[1:]:
        piece = tokenizer.decode(token)
        out.append((tokenizer(text)["input_ids"], tokenizer(piece, add_special_tokens=False)["input_ids"][0]))
        text += piece
    return out


@torch.no_grad()
def _next_token_probs(model: Any, queries: list[tuple[list[int], int]], batch_size: int) -> list[float]:
    """p(target | input ids) of each query, from the model's last position (softmax in fp32, as upstream)."""
    device = next(model.parameters()).device
    uniq = sorted(set((tuple(ids), t) for ids, t in queries), key=lambda q: len(q[0]), reverse=True)
    probs: dict[tuple[tuple[int, ...], int], float] = {}
    for start in range(0, len(uniq), batch_size):
        chunk = uniq[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.tensor([list(i) + [0] * (width - len(i)) for i, _ in chunk], device=device)
        mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i, _ in chunk], device=device)
        positions = torch.arange(width, device=device).expand(len(chunk), width)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits.float()
        last = logits[torch.arange(len(chunk)), mask.sum(-1) - 1]
        p = torch.softmax(last, dim=-1)
        for row, (i, t) in enumerate(chunk):
            probs[(i, t)] = p[row, t].item()
    return [probs[(tuple(ids), t)] for ids, t in queries]


def surprisals(model: Any, tokenizer: Any, pairs: list[tuple[str, str]], batch_size: int = 64) -> list[float]:
    """-log p(word | context) of each (context, word), the word's tokens multiplied as the official code does."""
    with quiet_transformers():  # long contexts: the result's notes say so
        per_pair = [_queries(tokenizer, c, w) for c, w in pairs]
    flat = _next_token_probs(model, [q for qs in per_pair for q in qs], batch_size)
    out, at = [], 0
    for qs in per_pair:
        p = float(np.prod(flat[at : at + len(qs)]))
        out.append(-math.log(p) if p > 0 else math.inf)  # upstream stops with an error on p = 0
        at += len(qs)
    return out


def r_squared(y: np.ndarray, columns: list[np.ndarray]) -> float:
    """R² of the least-squares fit of y on an intercept and ``columns`` (centred total sum of squares)."""
    x = np.column_stack([np.ones(len(y)), *columns])
    beta, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ beta
    return float(1 - resid @ resid / ((y - y.mean()) @ (y - y.mean())))


def _fit(rows: list[dict[str, Any]], dv: str, predictors: tuple[str, ...]) -> float:
    """R² of ``dv`` on the predictors and all their pairwise interactions, over the rows where they are present."""
    keep = [r for r in rows if not any(math.isnan(r[k]) for k in (dv, *predictors))]
    y = np.array([r[dv] for r in keep])
    cols = {k: np.array([r[k] for r in keep]) for k in predictors}
    terms = [cols[k] for k in predictors] + [cols[a] * cols[b] for a, b in combinations(predictors, 2)]
    return r_squared(y, terms)


def _gain(rows: list[dict[str, Any]], dv: str, base: tuple[str, ...]) -> float:
    """100 × (R² with surprisal − R² without) / (1 − R² without)."""
    r2_base = _fit(rows, dv, base)
    keep = [r for r in rows if not any(math.isnan(r[k]) for k in (dv, "pred", *base))]
    y = np.array([r[dv] for r in keep])
    cols = {k: np.array([r[k] for r in keep]) for k in base}
    terms = [cols[k] for k in base] + [cols[a] * cols[b] for a, b in combinations(base, 2)]
    r2_model = r_squared(y, [*terms, np.array([r["pred"] for r in keep])])
    return 100 * (r2_model - r2_base) / (1 - r2_base)


def _check_positions(data: str | Path, rows: list[dict[str, Any]], config: Any, tokenizer: Any) -> None:
    """Stop on the first context longer than a model with learned positions can read (it would index past its
    position table). The official scorer does not truncate, so neither do we; rotary models read on (a note says so)."""
    limit = max_positions(config)
    if limit is None or reads_past_positions(config):
        return
    with quiet_transformers():
        for lineno, r in enumerate(rows, start=2):
            for field, word in (("item", "word"), ("prev_item", "prev_word")):
                if r[field] is None:
                    continue
                n = len(_queries(tokenizer, r[field], r[word])[-1][0])
                if n > limit:
                    raise UserError(f"{data}: line {lineno}: field {field!r} with its {word!r} needs {n} tokens, more "
                                    f"than the model's {limit} positions (the official scorer does not truncate)")


def evaluate_reading(model_dir: str | Path, data: str | Path, *, batch_size: int = 64,
                     device: str | None = None) -> dict[str, Any]:
    """Score the reading task with the causal LM in ``model_dir`` (schema above)."""
    rows = read_rows(data)
    model, tokenizer = load_causal_lm(model_dir, resolve_device(device))
    _check_positions(data, rows, model.config, tokenizer)
    pairs = [(r["item"], r["word"]) for r in rows]
    prev = [(r["prev_item"], r["prev_word"]) for r in rows if r["prev_item"] is not None]
    scores = surprisals(model, tokenizer, pairs + prev, batch_size)
    it = iter(scores[len(pairs) :])
    for r, s in zip(rows, scores, strict=False):
        r["pred"] = s
        r["prev_pred"] = next(it) if r["prev_item"] is not None else math.nan
    per = {dv: _gain(rows, dv, BASE) for dv in EYE}
    per[SELF_PACED] = _gain(rows, SELF_PACED, SPILLOVER)
    eye = sum(per[dv] for dv in EYE) / len(EYE)
    limit = max_positions(model.config)
    with quiet_transformers():
        longest = max(len(tokenizer(c)["input_ids"]) + 1 for c, _ in pairs)
    notes = [f"the longest context has {longest} tokens, more than the model's {limit} positions"] if limit and longest > limit else []
    return {"task": "reading", "model": str(model_dir), "data": str(data), "n_words": len(rows),
            "eye_tracking": eye, "self_paced": per[SELF_PACED], "per_measure": per,
            "headline": (eye + per[SELF_PACED]) / 2, "notes": notes}


def format_reading_table(result: dict[str, Any]) -> str:
    lines = [f"reading: {result['model']} on {result['data']} ({result['n_words']} words)", *result.get("notes", []), "",
             "| measure | gain in R² (% of what was left) |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in result["per_measure"].items()]
    lines += [f"| **eye tracking** (mean of the RT measures) | {result['eye_tracking']:.2f} |",
              f"| **self-paced reading** (one-word spillover) | {result['self_paced']:.2f} |",
              f"| headline (mean of the two) | {result['headline']:.2f} |"]
    return "\n".join(lines)
