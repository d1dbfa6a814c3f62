"""Zero-shot completion ranking: EWoK, entity tracking and COMPS, in the BabyLM pipelines' file formats.

Each item offers candidate texts that end in a completion; the model prefers the candidate whose
completion tokens get the highest summed log-probability given everything before them. The correct
candidate is always the first, and, as in the official pipelines (first argmax), a tie with it counts
as correct unless ``ties_correct`` is off. Files are JSON lines (``.jsonl``; ``.json``/``.jsonl.gz``
also read), a folder of them or one file; the real data sets are gated or password-protected, so the
user points ``eval.<task>`` at their copy.

- **EWoK** (BabyLM 2024 ``ewok_filtered/<Domain>.jsonl``, 2025 the same): fields ``Domain``,
  ``Context1``, ``Target1``, ``Target2`` (and ``Context2``, ``ContextType``, ... which scoring does not
  use). Candidates ``Context1 + " " + Target1`` and ``Context1 + " " + Target2``, completion
  ``" " + Target``; the released files hold each item twice, contexts and targets swapped. Headline:
  unweighted mean of the per-``Domain`` accuracies.
- **Entity tracking** (BabyLM 2025 ``entity_tracking/``): fields ``input_prefix``, ``options`` (a list, the
  correct one first), ``numops``; candidates ``input_prefix + option``, completion ``option``. Groups are
  ``<file stem>_<numops>_ops``; the file stems start with one of the splits ``regular``, ``ambiref``,
  ``move_contents``. Headline: the mean over splits of the mean over each split's groups.
- **COMPS** (BabyLM 2025 ``comps/``): fields ``prefix_acceptable``, ``prefix_unacceptable``,
  ``property_phrase``; candidates ``prefix + " " + property_phrase``, completion ``property_phrase``. Groups
  by file: ``comps_base`` → base, ``comps_wugs`` → wugs, ``comps_wugs_dist-before`` → wugs_dist_before,
  any other → wugs_dist_in_between. Headline: the unweighted mean over groups.

Completion tokens are found as the official 2025 pipeline finds them: the candidate is tokenized whole
(no special tokens), and every token whose character span ends after the completion's first character
is scored. ``context_prefix`` puts one token before the text (``none`` in the official pipelines; with
``none`` a completion that is the whole text loses its first token, which has no context).

Result JSON: ``{"task", "model", "data", "protocol": {"context_prefix", "prefix_token_id",
"ties_correct"}, "groups": {name: {"accuracy", "n", "ties"}}, "splits": {...} (entity tracking),
"headline": float, "accuracy": float (pooled), "n_items": int, "ties": int, "chosen": [option index per item]}``;
accuracies are fractions; ``chosen`` (0 = the correct option) is what an official predictions file is built from.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from babyllama.errors import UserError
from babyllama.evaluate.blimp import data_files, prefix_token_id, resolve_data, score_sequences
from babyllama.evaluate.formats import load_causal_lm, read_json_rows, text_field
from babyllama.runtime import resolve_device


@dataclass(frozen=True)
class Item:
    options: list[tuple[str, str]]  # (whole text, its completion) per candidate; the correct one first
    group: str


def _text(path: Path, loc: str, row: dict[str, Any], key: str, task: str) -> str:
    if key not in row:
        raise UserError(f"{path}: {loc}: missing field {key!r}, not the {task} format (fields: {', '.join(FIELDS[task])})")
    return text_field(path, loc, row, key)


def _ewok(path: Path, loc: str, row: dict[str, Any]) -> Item:
    context, domain = _text(path, loc, row, "Context1", "ewok"), _text(path, loc, row, "Domain", "ewok")
    targets = [" " + _text(path, loc, row, k, "ewok") for k in ("Target1", "Target2")]
    return Item([(context + t, t) for t in targets], domain)


ENTITY_SPLITS = ("regular", "ambiref", "move_contents")


def _entity_tracking(path: Path, loc: str, row: dict[str, Any]) -> Item:
    prefix = _text(path, loc, row, "input_prefix", "entity_tracking")
    options = row.get("options")
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        raise UserError(f"{path}: {loc}: field 'options' must be a list of at least 2 strings (the correct one first)")
    if "numops" not in row:
        raise UserError(f"{path}: {loc}: missing field 'numops', not the entity_tracking format "
                        f"(fields: {', '.join(FIELDS['entity_tracking'])})")
    stem = path.name.split(".")[0]
    if not stem.startswith(ENTITY_SPLITS):
        raise UserError(f"{path}: entity-tracking file names start with a split ({', '.join(ENTITY_SPLITS)})")
    return Item([(prefix + o, o) for o in options], f"{stem}_{row['numops']}_ops")


COMPS_SUBSETS = {"comps_base": "base", "comps_wugs": "wugs", "comps_wugs_dist-before": "wugs_dist_before"}


def _comps(path: Path, loc: str, row: dict[str, Any]) -> Item:
    good, bad, phrase = (_text(path, loc, row, k, "comps") for k in FIELDS["comps"])
    subset = COMPS_SUBSETS.get(path.name.split(".")[0], "wugs_dist_in_between")
    return Item([(good + " " + phrase, phrase), (bad + " " + phrase, phrase)], subset)


FIELDS = {
    "ewok": ("Domain", "Context1", "Target1", "Target2"),
    "entity_tracking": ("input_prefix", "options", "numops"),
    "comps": ("prefix_acceptable", "prefix_unacceptable", "property_phrase"),
}
DECODERS: dict[str, Callable[[Path, str, dict[str, Any]], Item]] = {
    "ewok": _ewok, "entity_tracking": _entity_tracking, "comps": _comps}


def load_items(task: str, data: str | Path) -> list[Item]:
    """Every item of ``task`` under ``data`` (a folder of JSON-lines files, or one file)."""
    items = []
    for path in data_files(resolve_data(data), f"{task} items"):
        rows = read_json_rows(path)
        if not rows:
            raise UserError(f"{path}: no {task} items in this file")
        items += [DECODERS[task](path, loc, row) for loc, row in rows]
    return items


def completion_lengths(tokenizer: Any, options: list[tuple[str, str]]) -> tuple[list[list[int]], list[int]]:
    """Token ids of each whole text and how many of its last tokens belong to the completion."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("completion tasks need a fast tokenizer (tokenizer.json) to locate the completion's tokens")
    enc = tokenizer([t for t, _ in options], add_special_tokens=False, return_offsets_mapping=True)
    ids, counts = [], []
    for (text, completion), row_ids, offsets in zip(options, enc["input_ids"], enc["offset_mapping"], strict=True):
        start = len(text) - len(completion)
        ids.append(list(row_ids))
        counts.append(sum(1 for _, end in offsets if end > start))
    return ids, counts


def aggregate(task: str, items: list[Item], scores: list[list[float]], ties_correct: bool) -> dict[str, Any]:
    """Per-group accuracies, the official headline, pooled accuracy and tie count."""
    groups: dict[str, list[int]] = {}
    chosen = []  # per item, in data order: the option counted as the model's answer (0 = the correct one)
    for item, s in zip(items, scores, strict=True):
        best_other = max(s[1:])
        tie = s[0] == best_other
        ok = s[0] > best_other or (tie and ties_correct)
        chosen.append(0 if ok else 1 + s[1:].index(best_other))
        g = groups.setdefault(item.group, [0, 0, 0])
        g[0], g[1], g[2] = g[0] + ok, g[1] + 1, g[2] + tie
    stats = {k: {"accuracy": c / n, "n": n, "ties": t} for k, (c, n, t) in sorted(groups.items())}
    out: dict[str, Any] = {"groups": stats, "chosen": chosen}
    if task == "entity_tracking":
        splits = {}
        for split in ENTITY_SPLITS:
            accs = [v["accuracy"] for k, v in stats.items() if k.startswith(split)]
            if accs:
                splits[split] = sum(accs) / len(accs)
        out["splits"] = splits
        out["headline"] = sum(splits.values()) / len(splits)
    else:
        out["headline"] = sum(v["accuracy"] for v in stats.values()) / len(stats)
    n = sum(v["n"] for v in stats.values())
    out["accuracy"] = sum(c for c, _, _ in groups.values()) / n
    out["n_items"] = n
    out["ties"] = sum(t for _, _, t in groups.values())
    return out


def evaluate_completions(
    task: str,
    model_dir: str | Path,
    data: str | Path,
    *,
    context_prefix: Literal["eos", "bos", "none"] = "none",
    ties_correct: bool = True,
    batch_size: int = 64,
    device: str | None = None,
) -> dict[str, Any]:
    """Score every item of ``task`` (ewok, entity_tracking, comps) under ``data`` (schema above)."""
    if task not in DECODERS:
        raise UserError(f"unknown completion task {task!r} (known: {', '.join(DECODERS)})")
    items = load_items(task, data)
    model, tokenizer = load_causal_lm(model_dir, resolve_device(device))
    pid = prefix_token_id(tokenizer, model.config, context_prefix, model_dir)
    flat = [o for item in items for o in item.options]
    ids, counts = completion_lengths(tokenizer, flat)
    flat_scores = score_sequences(model, ids, prefix_id=pid, batch_size=batch_size, progress=True, scored=counts)
    scores, start = [], 0
    for item in items:
        scores.append(flat_scores[start : start + len(item.options)])
        start += len(item.options)
    result = {"task": task, "model": str(model_dir), "data": str(data),
              "protocol": {"context_prefix": context_prefix, "prefix_token_id": pid, "ties_correct": ties_correct}}
    result.update(aggregate(task, items, scores, ties_correct))
    return result


def format_completion_table(result: dict[str, Any]) -> str:
    """Markdown: accuracy (%) per group (and split), and the headline."""
    proto = result["protocol"]
    lines = [f"{result['task']}: {result['model']} on {result['data']}",
             f"(context prefix {proto['context_prefix']}, ties {'correct' if proto['ties_correct'] else 'wrong'})", "",
             "| group | accuracy | items | ties |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {100 * v['accuracy']:.1f} | {v['n']} | {v['ties']} |" for k, v in result["groups"].items()]
    for split, acc in result.get("splits", {}).items():
        lines.append(f"| split {split} | {100 * acc:.1f} | | |")
    lines.append(f"| **headline** | {100 * result['headline']:.1f} | {result['n_items']} | {result['ties']} |")
    return "\n".join(lines)
