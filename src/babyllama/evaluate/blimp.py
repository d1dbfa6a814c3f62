"""BLiMP-style minimal pairs: does the model give the acceptable sentence the higher log-probability?

Data (auto-detected, a folder of files or one file):

- original BLiMP, ``<UID>.jsonl``: sentence_good, sentence_bad, UID, linguistics_term, field, pairID;
- BabyLM 2024 ``blimp_filtered``: the same fields, with the id called ``pair_id``;
- BabyLM 2024 ``supplement_filtered``: sentence_good / sentence_bad plus context fields we ignore
  (sentences may span several lines, e.g. turn-taking dialogues);
- BabyLM 2023 filtered, ``<phenomenon>.json``: one file per phenomenon, rows with sentence_good /
  sentence_bad;
- ``embedded:blimp``: the first 100 pairs of each original paradigm, shipped in the package
  (evaluate/data/README.md). Files may be gzipped (``.jsonl.gz``).

A row without UID / linguistics_term is grouped under its file's stem; a row without ``field``
counts in no field.

Scoring. A sentence's score is the sum (or mean) of the log-probabilities of its tokens, each
conditioned on everything before it and on one prefix token:

- ``prefix="eos"`` (default): one ``</s>``, the BabyLM 2023 pipeline's stand-in for BOS; it is also
  our training separator (every line is followed by ``</s>``), so for our models it is a sentence start;
- ``prefix="bos"``: the tokenizer's BOS token;
- ``prefix="none"``: no prefix, so the first token is conditioned on nothing and left unscored (the
  BabyLM 2025 pipeline, for tokenizers that add no special tokens).

``leading_space`` prepends " " to each sentence before tokenizing, as the pipeline does (its target
separator). Inputs longer than the model's positions are truncated from the left, as the pipeline does.
A pair is correct when score(good) > score(bad). Equal scores are ties: counted, and wrong unless
``ties_correct`` (the BabyLM pipelines' argmax picks the first choice, so they count ties as correct).

Sentences are scored in batches sorted by length, right-padded, with an attention mask and explicit
position ids, so a sentence's score does not depend on what it is batched with.

Result JSON (what ``babyllama evaluate blimp --out`` writes; the report stage reads it)::

    {"model": str, "data": str,
     "protocol": {"prefix": "eos"|"bos"|"none", "prefix_token_id": int|null, "leading_space": bool,
                  "reduction": "sum"|"mean", "ties_correct": bool},
     "formats": [str, ...],              # detected data formats
     "paradigms": {UID: {"accuracy": float, "n": int, "ties": int}},
     "phenomena": {linguistics_term: {"accuracy": float, "n": int, "ties": int}},
     "fields": {field: {"accuracy": float, "n": int, "ties": int}},
     "macro_paradigms": float,           # unweighted mean over paradigms
     "macro_phenomena": float,           # unweighted mean over phenomena
     "aggregation": "phenomena"|"paradigms", "headline": float,   # the macro the protocol reports
     "accuracy": float,                  # pooled over all pairs
     "n_pairs": int, "ties": int,
     "items": {linguistics_term: "0110..."},  # per pair, in data order: 1 = correct (paired bootstraps)
     "paradigm_items": {uid: "0110..."}}  # the same, grouped by paradigm (the babylm-2024/2025 headline groups)

Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from babyllama import progress as progress_bars
from babyllama.errors import UserError
from babyllama.evaluate.formats import (
    load_causal_lm,
    max_positions,
    read_json_rows,
    special_token_id,
    text_field,
)
from babyllama.runtime import resolve_device


@dataclass(frozen=True)
class Pair:
    good: str
    bad: str
    paradigm: str
    phenomenon: str
    field: str | None


# -- data ----------------------------------------------------------------------------------------------


#: Data shipped inside the package (evaluate/data/README.md: source, licence, how it was made).
EMBEDDED = {"embedded:blimp": Path(__file__).parent / "data" / "blimp-100.jsonl.gz"}
DATA_SUFFIXES = (".jsonl", ".json", ".jsonl.gz")


def resolve_data(data: str | Path) -> Path:
    """A data path, with ``embedded:<name>`` mapped to the package's copy and ``~`` expanded."""
    text = str(data)
    if text.startswith("embedded:"):
        if text not in EMBEDDED:
            raise UserError(f"{text}: no such embedded data set (known: {', '.join(EMBEDDED)})")
        return EMBEDDED[text]
    return Path(text).expanduser()


def data_files(data: Path, what: str = "minimal pairs") -> list[Path]:
    """The .jsonl / .json / .jsonl.gz files of ``data`` (a file, or a folder's files in name order)."""
    if data.is_file():
        if not data.name.endswith(DATA_SUFFIXES):
            raise UserError(f"{data}: expected a .jsonl or .json file of {what}")
        return [data]
    if not data.is_dir():
        raise UserError(f"{data}: {what} data not found")
    files = sorted(p for p in data.iterdir() if p.name.endswith(DATA_SUFFIXES) and not p.name.startswith("."))
    if not files:
        raise UserError(f"{data}: no .jsonl or .json files of {what} in this folder")
    return files


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


def _detect_format(path: Path, row: dict[str, Any]) -> str:
    if path.suffix == ".json":
        return "babylm-2023-filtered"
    if "pairID" in row:
        return "blimp"
    if "pair_id" in row:
        return "babylm-2024-filtered"
    return "babylm-2024-supplement"


def _group(path: Path, loc: str, row: dict[str, Any], key: str) -> str | None:
    value = row.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise UserError(f"{path}: {loc}: field {key!r} must be a non-empty string")
    return value


def load_pairs(data: str | Path) -> tuple[list[Pair], list[str]]:
    """Every minimal pair under ``data`` (folder or file) and the formats detected."""
    pairs: list[Pair] = []
    formats: set[str] = set()
    for path in data_files(resolve_data(data)):
        rows = read_json_rows(path)
        if not rows:
            raise UserError(f"{path}: no minimal pairs in this file")
        formats.add(_detect_format(path, rows[0][1]))
        for loc, row in rows:
            good = text_field(path, loc, row, "sentence_good")
            bad = text_field(path, loc, row, "sentence_bad")
            pairs.append(Pair(
                good=good,
                bad=bad,
                paradigm=_group(path, loc, row, "UID") or _stem(path),
                phenomenon=_group(path, loc, row, "linguistics_term") or _stem(path),
                field=_group(path, loc, row, "field"),
            ))
    return pairs, sorted(formats)


# -- scoring -------------------------------------------------------------------------------------------


def encode(tokenizer: Any, sentences: list[str], leading_space: bool) -> list[list[int]]:
    """Token ids of each sentence, without special tokens (the prefix is added by the scorer)."""
    texts = [(" " + s) if leading_space else s for s in sentences]
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


@torch.no_grad()
def score_sequences(
    model: Any,
    seqs: list[list[int]],
    *,
    prefix_id: int | None,
    reduction: Literal["sum", "mean"] = "sum",
    batch_size: int = 64,
    progress: bool = False,
    scored: list[int] | None = None,
) -> list[float]:
    """Score of each token sequence: sum/mean of log p(token | prefix, earlier tokens).

    With ``prefix_id`` None the first token has no context and is not scored. ``scored[i]``, when
    given, limits sequence i's score to its last ``scored[i]`` tokens (a completion after a context).
    Identical inputs are scored once. A sequence with nothing to score gets 0.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be at least 1, got {batch_size}")
    device = next(model.parameters()).device
    limit = max_positions(model.config)
    counts = scored if scored is not None else [None] * len(seqs)
    inputs: dict[tuple[Any, ...], list[int]] = {}
    for s, n in zip(seqs, counts, strict=True):
        key = (*s, n)
        if key not in inputs:
            x = ([prefix_id] if prefix_id is not None else []) + list(s)
            inputs[key] = x[-limit:] if limit and len(x) > limit else x
    # Longest first: the first batch is the biggest, so an out-of-memory error shows up at once.
    order = sorted(inputs, key=lambda k: len(inputs[k]), reverse=True)
    scores: dict[tuple[int, ...], float] = {}
    batches = range(0, len(order), batch_size)
    for start in progress_bars.iterate(batches, "scoring", "batch", enabled=progress):
        keys = order[start : start + batch_size]
        rows = [inputs[k] for k in keys]
        width = max(len(r) for r in rows)
        if width < 2:  # nothing is predicted in any of these
            scores.update({k: 0.0 for k in keys})
            continue
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows], dtype=torch.long, device=device)
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows], dtype=torch.long, device=device)
        # Target t (the token at position t + 1) counts when it is among the row's last n tokens.
        first = torch.tensor([1 if k[-1] is None else max(1, len(r) - k[-1]) for k, r in zip(keys, rows, strict=True)],
                             device=device)
        target = torch.arange(1, width, device=device)
        counted = (target >= first[:, None]) & (target < mask.sum(-1, keepdim=True))
        positions = torch.arange(width, device=device).expand(len(rows), width)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
        token_logp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1)
        weight = counted.to(token_logp.dtype)
        total = (token_logp * weight).sum(-1)
        if reduction == "mean":
            total = total / weight.sum(-1).clamp(min=1)
        scores.update(zip(keys, total.tolist(), strict=True))
    return [scores[(*s, n)] for s, n in zip(seqs, counts, strict=True)]


def prefix_token_id(tokenizer: Any, config: Any, prefix: str, model_dir: str | Path) -> int | None:
    if prefix == "none":
        return None
    if prefix not in ("eos", "bos"):
        raise UserError(f"prefix must be eos, bos or none, got {prefix!r}")
    tid = special_token_id(tokenizer, config, prefix)
    if tid is None:
        raise UserError(f"{model_dir}: the tokenizer and config define no {prefix} token; use --prefix none or the other one")
    return int(tid)


# -- evaluation ----------------------------------------------------------------------------------------


def _stats(correct: int, n: int, ties: int) -> dict[str, Any]:
    return {"accuracy": correct / n if n else 0.0, "n": n, "ties": ties}


def aggregate(pairs: list[Pair], good: list[float], bad: list[float], ties_correct: bool) -> dict[str, Any]:
    """Accuracies per paradigm, phenomenon and field, their macro means, and pooled totals."""
    groups: dict[str, dict[str, list[int]]] = {"paradigms": {}, "phenomena": {}, "fields": {}}
    total = [0, 0, 0]  # correct, n, ties
    items: dict[str, list[str]] = {}
    paradigm_items: dict[str, list[str]] = {}
    for p, g, b in zip(pairs, good, bad, strict=True):
        tie = g == b
        ok = g > b or (tie and ties_correct)
        items.setdefault(p.phenomenon, []).append("1" if ok else "0")
        if p.paradigm is not None:
            paradigm_items.setdefault(p.paradigm, []).append("1" if ok else "0")
        for kind, name in (("paradigms", p.paradigm), ("phenomena", p.phenomenon), ("fields", p.field)):
            if name is None:
                continue
            c = groups[kind].setdefault(name, [0, 0, 0])
            c[0] += ok
            c[1] += 1
            c[2] += tie
        total[0] += ok
        total[1] += 1
        total[2] += tie
    out: dict[str, Any] = {kind: {k: _stats(*v) for k, v in sorted(g.items())} for kind, g in groups.items()}
    for kind, key in (("paradigms", "macro_paradigms"), ("phenomena", "macro_phenomena")):
        accs = [s["accuracy"] for s in out[kind].values()]
        out[key] = sum(accs) / len(accs) if accs else 0.0
    out["accuracy"] = total[0] / total[1] if total[1] else 0.0
    out["n_pairs"] = total[1]
    out["ties"] = total[2]
    # per-item correctness (1/0) in data order, grouped both ways: a paired test follows the headline's groups
    out["items"] = {k: "".join(v) for k, v in sorted(items.items())}
    out["paradigm_items"] = {k: "".join(v) for k, v in sorted(paradigm_items.items())}
    return out


def evaluate_blimp(
    model_dir: str | Path,
    data: str | Path,
    *,
    prefix: Literal["eos", "bos", "none"] = "eos",
    leading_space: bool = True,
    reduction: Literal["sum", "mean"] = "sum",
    ties_correct: bool = False,
    aggregation: Literal["phenomena", "paradigms"] = "phenomena",
    batch_size: int = 64,
    device: str | None = None,
) -> dict[str, Any]:
    """Score every minimal pair under ``data`` with the causal LM in ``model_dir`` (schema above)."""
    if aggregation not in ("phenomena", "paradigms"):
        raise UserError(f"aggregation must be phenomena or paradigms, got {aggregation!r}")
    if reduction not in ("sum", "mean"):
        raise UserError(f"reduction must be sum or mean, got {reduction!r}")
    pairs, formats = load_pairs(data)
    model, tokenizer = load_causal_lm(model_dir, resolve_device(device))
    pid = prefix_token_id(tokenizer, model.config, prefix, model_dir)
    good = encode(tokenizer, [p.good for p in pairs], leading_space)
    bad = encode(tokenizer, [p.bad for p in pairs], leading_space)
    scores = score_sequences(model, good + bad, prefix_id=pid, reduction=reduction, batch_size=batch_size,
                             progress=True)
    result = {
        "model": str(model_dir),
        "data": str(data),
        "protocol": {"prefix": prefix, "prefix_token_id": pid, "leading_space": leading_space,
                     "reduction": reduction, "ties_correct": ties_correct},
        "formats": formats,
    }
    result.update(aggregate(pairs, scores[: len(pairs)], scores[len(pairs) :], ties_correct))
    result["aggregation"] = aggregation
    result["headline"] = result[f"macro_{aggregation}"]
    return result


def format_blimp_table(result: dict[str, Any]) -> str:
    """Markdown: accuracy (%) per phenomenon, per field, and the macro means."""
    proto = result["protocol"]
    lines = [
        f"BLiMP: {result['model']} on {result['data']}",
        f"(prefix {proto.get('prefix', proto['prefix_token_id'])}, leading space {'on' if proto['leading_space'] else 'off'}, "
        f"{proto['reduction']} of log-probs, ties {'correct' if proto['ties_correct'] else 'wrong'})",
        "",
    ]
    for kind, title in (("phenomena", "phenomenon"), ("fields", "field")):
        if not result.get(kind):
            continue
        lines += [f"| {title} | accuracy | pairs | ties |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {100 * s['accuracy']:.1f} | {s['n']} | {s['ties']} |" for name, s in result[kind].items()]
        lines.append("")
    lines += ["| macro | accuracy |", "|---|---:|",
              f"| over {len(result['paradigms'])} paradigms | {100 * result['macro_paradigms']:.1f} |",
              f"| over {len(result['phenomena'])} phenomena | {100 * result['macro_phenomena']:.1f} |"]
    if "accuracy" in result:
        lines.append(f"| all {result.get('n_pairs', '')} pairs pooled | {100 * result['accuracy']:.1f} |")
    if "headline" in result:
        lines.append(f"| **headline** (mean over {result['aggregation']}) | {100 * result['headline']:.1f} |")
    return "\n".join(lines)
