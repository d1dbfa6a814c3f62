"""The BabyLM 2025 WUG tasks: does the model prefer a nonce word's inflections as people do?

Two data sets, one format (``wug_adj_nominalization/wug_adj_nominalization.jsonl``, 200 nonce adjectives
nominalised with -ity or -ness, Hofmann et al. 2024; ``wug_past_tense/wug_past_tense.jsonl``, 50 nonce
verbs, Weissweiler et al. 2023): one JSON object a line with ``sentences`` (the candidate sentences joined
by a tab, the form people's ``ratio`` counts first) and ``ratio`` (the share of people who chose it).

As the official 2025 causal scorer computes it: each candidate is a whole sentence, tokenized with the
tokenizer's own special tokens, its tokens after the first summed as log-probabilities (the minimal-pair
scoring of BLiMP, ``context_prefix`` as for the completion tasks); the model's ratio is the softmax of
the candidates' sums, taken at the first candidate (float32, temperature 1); the score is Spearman's rank
correlation between the model's and people's ratios over all items (ties ranked by their mean), × 100
when printed. A correlation that is undefined (all ratios equal) is null, with a note.

The 2026 code no longer scores these tasks, so ``babylm-2026`` does not run them (registry.py).

Result JSON: ``{"task": "wug_adj"|"wug_past", "model", "data", "protocol": {"context_prefix",
"prefix_token_id", "truncate"}, "n_items": int, "headline": float | null (Spearman ρ, a fraction),
"model_ratios": [float], "human_ratios": [float], "notes": [str]}``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from babyllama.errors import UserError
from babyllama.evaluate.blimp import data_files, length_note, prefix_token_id, resolve_data, score_sequences
from babyllama.evaluate.completions import encode_options
from babyllama.evaluate.formats import load_causal_lm, read_json_rows, text_field
from babyllama.runtime import resolve_device

TASKS = {"wug_adj": "adjective nominalisation", "wug_past": "past tense"}


def load_wug(data: str | Path, task: str = "wug_adj") -> list[tuple[list[str], float]]:
    """(candidate sentences, human ratio) of every item under ``data`` (a file, or a folder of them)."""
    items = []
    for path in data_files(resolve_data(data), f"{task} items"):
        rows = read_json_rows(path)
        if not rows:
            raise UserError(f"{path}: no {task} items in this file")
        items += [_item(path, loc, row) for loc, row in rows]
    return items


def _item(path: Path, loc: str, row: dict[str, Any]) -> tuple[list[str], float]:
    if "sentences" not in row:
        raise UserError(f"{path}: {loc}: missing field 'sentences', not the WUG format (fields: sentences, ratio)")
    candidates = text_field(path, loc, row, "sentences").split("\t")
    if len(candidates) < 2 or not all(c.strip() for c in candidates):
        raise UserError(f"{path}: {loc}: field 'sentences' must hold at least 2 non-empty sentences joined by a tab")
    if "ratio" not in row:
        raise UserError(f"{path}: {loc}: missing field 'ratio', not the WUG format (fields: sentences, ratio)")
    ratio = row["ratio"]
    if isinstance(ratio, str):  # the official reader calls float() on it
        try:
            ratio = float(ratio)
        except ValueError:
            ratio = None
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio):
        raise UserError(f"{path}: {loc}: field 'ratio' must be a finite number, got {row['ratio']!r}")
    return candidates, float(ratio)


def ranks(values: list[float]) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    out = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
            j += 1
        out[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(a: list[float], b: list[float]) -> float | None:
    """Spearman's ρ (Pearson's r of the mean ranks); None when either side is constant."""
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denom if denom > 0 else None


def first_share(scores: list[list[float]]) -> list[float]:
    """Softmax of each item's candidate log-probabilities at the first candidate, in float32 as upstream."""
    return [torch.softmax(torch.tensor(s, dtype=torch.float32), dim=0)[0].item() for s in scores]


def evaluate_wug(
    task: str,
    model_dir: str | Path,
    data: str | Path,
    *,
    context_prefix: Literal["eos", "bos", "none", "tokenizer"] = "tokenizer",
    truncate: bool = False,
    batch_size: int = 64,
    device: str | None = None,
) -> dict[str, Any]:
    """Score ``task`` (wug_adj or wug_past) on ``data`` with the causal LM in ``model_dir`` (schema above)."""
    if task not in TASKS:
        raise UserError(f"unknown WUG task {task!r} (known: {', '.join(TASKS)})")
    items = load_wug(data, task)
    model, tokenizer = load_causal_lm(model_dir, resolve_device(device))
    pid = prefix_token_id(tokenizer, model.config, context_prefix, model_dir)
    flat = [(s, s) for candidates, _ in items for s in candidates]
    ids, spans = encode_options(tokenizer, flat, context_prefix)
    flat_scores = score_sequences(model, ids, prefix_id=pid, batch_size=batch_size, spans=spans, truncate=truncate)
    scores, at = [], 0
    for candidates, _ in items:
        scores.append(flat_scores[at : at + len(candidates)])
        at += len(candidates)
    model_ratios, human = first_share(scores), [r for _, r in items]
    rho = spearman(model_ratios, human)
    notes = [n for n in [length_note(model.config, [len(x) + (pid is not None) for x in ids], truncate)] if n]
    if rho is None:
        notes.append("Spearman's ρ is undefined: the model's or people's ratios are all equal")
    return {"task": task, "model": str(model_dir), "data": str(data),
            "protocol": {"context_prefix": context_prefix, "prefix_token_id": pid, "truncate": truncate},
            "n_items": len(items), "headline": rho, "model_ratios": model_ratios, "human_ratios": human,
            "notes": notes}


def format_wug_table(result: dict[str, Any]) -> str:
    rho = result["headline"]
    return "\n".join([
        f"{result['task']} ({TASKS[result['task']]}): {result['model']} on {result['data']}",
        f"(context prefix {result['protocol']['context_prefix']})", *result.get("notes", []), "",
        "| items | Spearman ρ × 100 (model vs human ratios) |", "|---:|---:|",
        f"| {result['n_items']} | {'undefined' if rho is None else f'{100 * rho:.2f}'} |"])
