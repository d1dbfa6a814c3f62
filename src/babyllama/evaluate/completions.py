"""Zero-shot completion ranking: EWoK, entity tracking, COMPS and GlobalPIQA, in the BabyLM pipelines' formats.

Each item offers candidate texts that end in a completion; the model prefers the candidate whose
completion tokens get the highest summed log-probability given everything before them (GlobalPIQA: the
mean over the completion's tokens, as the 2026 code length-normalises). The correct candidate is the
first (GlobalPIQA: the row's ``label``); ties and NaN scores are settled by ``ties`` (evaluate/decide.py).
Files are JSON lines (``.jsonl``; ``.json``/``.jsonl.gz`` also read), a folder of them or one file; the
real data sets are gated or password-protected, so the user points ``eval.<task>`` at their copy.

- **EWoK** (BabyLM 2024/2025 ``ewok_filtered/<Domain>.jsonl``): fields ``Domain``, ``Context1``,
  ``Context2``, ``Target1``, ``Target2`` (and ``ContextType``, ... which scoring does not use). Pairing
  ``targets`` (2024/2025): ``Context1 + " " + Target1`` against ``Context1 + " " + Target2``; pairing
  ``contexts`` (2026): ``Context1 + " " + Target1`` against ``Context2 + " " + Target1`` (one target, two
  contexts). Completion ``" " + Target``. Headline: unweighted mean of the per-``Domain`` accuracies.
- **Entity tracking** (BabyLM 2025 ``entity_tracking/``): fields ``input_prefix``, ``options`` (a list, the
  correct one first), ``numops``; candidates ``input_prefix + option``, completion ``option``. Groups are
  ``<file stem>_<numops>_ops``; the file stems start with one of the splits ``regular``, ``ambiref``,
  ``move_contents``. With ``skip_nothing`` (2026) an item any of whose options contains "nothing" (case
  as written) is left out and counted in ``skipped``. Headline: the mean over splits of the mean over
  each split's groups.
- **COMPS** (BabyLM 2025 ``comps/``): fields ``prefix_acceptable``, ``prefix_unacceptable``,
  ``property_phrase``; candidates ``prefix + " " + property_phrase``, completion ``property_phrase``. Groups
  by file: ``comps_base`` → base, ``comps_wugs`` → wugs, ``comps_wugs_dist-before`` → wugs_dist_before,
  any other → wugs_dist_in_between. Headline: the unweighted mean over groups.
- **GlobalPIQA** (BabyLM 2026, English ``eng_latn.jsonl`` of ``mrlbenchmarks/global-piqa-parallel`` and
  ``-nonparallel``): fields ``example_id``, ``prompt``, ``solution0`` … ``solution{k-1}`` (k = 4 in the
  parallel set, 2 in the non-parallel one) and ``label`` (the correct solution's index); candidates
  ``prompt + " " + solution``, completion ``" " + solution``, scored by the completion's mean token
  log-probability. ``data`` is the official evaluation folder (holding ``global_piqa_parallel/`` and
  ``global_piqa_nonparallel/``) or one set's file or folder (a name with ``nonparallel`` or
  ``parallel`` says which; else four solution fields mean parallel). Per set: the mean over
  ``example_id`` of its accuracy (one item each: the pooled accuracy); headline: the mean over the sets.

Completion tokens are found as the official 2025/2026 pipelines find them: the candidate is tokenized
whole and every token whose character span ends after the completion's first character is scored.
``context_prefix`` puts one token before the text (``none``: nothing, and a completion that is the whole
text loses its first token; ``tokenizer``: the tokenizer's own special tokens, as the 2025/2026 code).

Result JSON: ``{"task", "model", "data", "protocol": {"context_prefix", "prefix_token_id", "ties", "seed",
"ties_correct", "truncate", ...}, "groups": {name: {"accuracy", "n", "ties"}}, "splits": {...} (entity
tracking), "sets": {...} (GlobalPIQA), "headline": float, "headline_by_ties": {rule: float}, "accuracy":
float (pooled), "n_items": int, "ties": int, "skipped": int, "notes": [str], "chosen": [candidate index per item]}``; accuracies are fractions; ``chosen``
(under ``eval.ties``) is what an official predictions file is built from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from babyllama.errors import UserError
from babyllama.evaluate.blimp import (
    data_files,
    length_note,
    official_inputs,
    prefix_token_id,
    resolve_data,
    score_sequences,
    tie_lines,
    tie_rule,
)
from babyllama.evaluate.decide import TIE_RULES, decide
from babyllama.evaluate.formats import load_causal_lm, read_json_rows, text_field
from babyllama.hf_logging import quiet_transformers
from babyllama.runtime import resolve_device


@dataclass(frozen=True)
class Item:
    options: list[tuple[str, str]]  # (whole text, its completion) per candidate
    group: str
    label: int = 0  # index of the correct candidate


def _text(path: Path, loc: str, row: dict[str, Any], key: str, task: str, *, completion: bool = False) -> str:
    """A text field; a ``completion`` (what is scored) must not be empty: an empty one has log-prob 0 and wins."""
    if key not in row:
        raise UserError(f"{path}: {loc}: missing field {key!r}, not the {task} format (fields: {', '.join(FIELDS[task])})")
    value = text_field(path, loc, row, key)
    if completion and not value.strip():
        raise UserError(f"{path}: {loc}: field {key!r} is empty: a completion to score needs text (a bad item)")
    return value


def _ewok(path: Path, loc: str, row: dict[str, Any], pairing: str = "targets") -> Item:
    c1, domain = (_text(path, loc, row, k, "ewok") for k in ("Context1", "Domain"))
    t1 = _text(path, loc, row, "Target1", "ewok", completion=True)
    if pairing == "contexts":  # 2026: one target after two contexts
        c2 = _text(path, loc, row, "Context2", "ewok")
        return Item([(c1 + " " + t1, " " + t1), (c2 + " " + t1, " " + t1)], domain)
    t2 = _text(path, loc, row, "Target2", "ewok", completion=True)
    return Item([(c1 + " " + t, " " + t) for t in (t1, t2)], domain)


ENTITY_SPLITS = ("regular", "ambiref", "move_contents")


def _entity_tracking(path: Path, loc: str, row: dict[str, Any], skip_nothing: bool = False) -> Item | None:
    prefix = _text(path, loc, row, "input_prefix", "entity_tracking")
    options = row.get("options")
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) for o in options):
        raise UserError(f"{path}: {loc}: field 'options' must be a list of at least 2 strings (the correct one first)")
    for i, option in enumerate(options):
        text_field(path, loc, {f"options[{i}]": option}, f"options[{i}]")
        if not option.strip():
            raise UserError(f"{path}: {loc}: options[{i}] is empty: a completion to score needs text (a bad item)")
    if "numops" not in row:
        raise UserError(f"{path}: {loc}: missing field 'numops', not the entity_tracking format "
                        f"(fields: {', '.join(FIELDS['entity_tracking'])})")
    stem = path.name.split(".")[0]
    if not stem.startswith(ENTITY_SPLITS):
        raise UserError(f"{path}: entity-tracking file names start with a split ({', '.join(ENTITY_SPLITS)})")
    if skip_nothing and any("nothing" in o for o in options):
        return None
    return Item([(prefix + o, o) for o in options], f"{stem}_{row['numops']}_ops")


COMPS_SUBSETS = {"comps_base": "base", "comps_wugs": "wugs", "comps_wugs_dist-before": "wugs_dist_before"}


def _comps(path: Path, loc: str, row: dict[str, Any]) -> Item:
    good, bad = (_text(path, loc, row, k, "comps") for k in FIELDS["comps"][:2])
    phrase = _text(path, loc, row, FIELDS["comps"][2], "comps", completion=True)
    subset = COMPS_SUBSETS.get(path.name.split(".")[0], "wugs_dist_in_between")
    return Item([(good + " " + phrase, phrase), (bad + " " + phrase, phrase)], subset)


def _global_piqa(path: Path, loc: str, row: dict[str, Any], n_solutions: int) -> Item:
    prompt = _text(path, loc, row, "prompt", "global_piqa")
    solutions = [_text(path, loc, row, f"solution{i}", "global_piqa", completion=True) for i in range(n_solutions)]
    if "example_id" not in row:
        raise UserError(f"{path}: {loc}: missing field 'example_id', not the global_piqa format "
                        f"(fields: {', '.join(FIELDS['global_piqa'])})")
    label = row.get("label")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < n_solutions:
        raise UserError(f"{path}: {loc}: field 'label' must be an integer from 0 to {n_solutions - 1}, got {label!r}")
    return Item([(prompt + " " + s, " " + s) for s in solutions], str(row["example_id"]), label)


FIELDS = {
    "ewok": ("Domain", "Context1", "Context2", "Target1", "Target2"),
    "entity_tracking": ("input_prefix", "options", "numops"),
    "comps": ("prefix_acceptable", "prefix_unacceptable", "property_phrase"),
    "global_piqa": ("example_id", "prompt", "solution0", "solution1", "...", "label"),
}
TASKS = ("ewok", "entity_tracking", "comps", "global_piqa")
PIQA_SETS = {"parallel": 4, "nonparallel": 2}  # set -> solutions per item


def _files(data: str | Path, what: str) -> list[tuple[Path, list[tuple[str, dict[str, Any]]]]]:
    out = []
    for path in data_files(resolve_data(data), what):
        rows = read_json_rows(path)
        if not rows:
            raise UserError(f"{path}: no {what} in this file")
        out.append((path, rows))
    return out


def piqa_sets(data: str | Path) -> dict[str, Path]:
    """{set: its file or folder} under ``data`` (the official evaluation folder, or one set)."""
    root = resolve_data(data)
    found = {name: root / f"global_piqa_{name}" for name in PIQA_SETS if (root / f"global_piqa_{name}").exists()}
    if found:
        return found
    name = root.name.lower()
    if "nonparallel" in name or "non_parallel" in name or "non-parallel" in name:
        return {"nonparallel": root}
    if "parallel" in name:
        return {"parallel": root}
    (path, rows), *_ = _files(root, "global_piqa items")
    return {"parallel" if "solution3" in rows[0][1] else "nonparallel": root}


def load_items(task: str, data: str | Path, *, ewok_pairing: str = "targets",
               skip_nothing: bool = False) -> tuple[list[Item], int]:
    """Every item of ``task`` under ``data`` (a folder of JSON-lines files, or one file), and how many were skipped."""
    if task == "global_piqa":
        items = []
        for name, where in piqa_sets(data).items():
            for path, rows in _files(where, "global_piqa items"):
                items += [replace(_global_piqa(path, loc, row, PIQA_SETS[name]), group=f"{name}/{row['example_id']}")
                          for loc, row in rows]
        return items, 0
    decoded = []
    for path, rows in _files(data, f"{task} items"):
        for loc, row in rows:
            if task == "ewok":
                decoded.append(_ewok(path, loc, row, ewok_pairing))
            elif task == "entity_tracking":
                decoded.append(_entity_tracking(path, loc, row, skip_nothing))
            else:
                decoded.append(_comps(path, loc, row))
    items = [i for i in decoded if i is not None]
    return items, len(decoded) - len(items)


def completion_lengths(tokenizer: Any, options: list[tuple[str, str]]) -> tuple[list[list[int]], list[int]]:
    """Token ids of each whole text (no special tokens) and how many of its last tokens belong to the completion."""
    if not getattr(tokenizer, "is_fast", False):
        raise UserError("completion tasks need a fast tokenizer (tokenizer.json) to locate the completion's tokens")
    with quiet_transformers():  # its "longer than the maximum length" warning: length_note says what happens
        enc = tokenizer([t for t, _ in options], add_special_tokens=False, return_offsets_mapping=True)
    ids, counts = [], []
    for (text, completion), row_ids, offsets in zip(options, enc["input_ids"], enc["offset_mapping"], strict=True):
        start = len(text) - len(completion)
        ids.append(list(row_ids))
        counts.append(sum(1 for _, end in offsets if end > start))
    return ids, counts


def encode_options(tokenizer: Any, options: list[tuple[str, str]], context_prefix: str) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Token ids of each candidate and the span of its completion's tokens."""
    if context_prefix == "tokenizer":
        return official_inputs(tokenizer, [t for t, _ in options], [c for _, c in options])
    ids, counts = completion_lengths(tokenizer, options)
    return ids, [(len(x) - n, len(x)) for x, n in zip(ids, counts, strict=True)]


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _headline(task: str, stats: dict[str, dict[str, Any]]) -> tuple[float, dict[str, float]]:
    """The official headline from per-group accuracies, and the level between (splits or sets)."""
    if task == "entity_tracking":
        mid = {s: _mean([v["accuracy"] for k, v in stats.items() if k.startswith(s)]) for s in ENTITY_SPLITS
               if any(k.startswith(s) for k in stats)}
    elif task == "global_piqa":
        mid = {s: _mean([v["accuracy"] for k, v in stats.items() if k.startswith(s + "/")]) for s in PIQA_SETS
               if any(k.startswith(s + "/") for k in stats)}
    else:
        return _mean([v["accuracy"] for v in stats.values()]), {}
    return _mean(list(mid.values())), mid


def aggregate(task: str, items: list[Item], scores: list[list[float]], ties: str = "wrong", seed: int = 0) -> dict[str, Any]:
    """Per-group accuracies, the official headline (under every tie rule too), pooled accuracy and tie count."""
    if ties not in TIE_RULES:
        raise UserError(f"ties must be one of {', '.join(TIE_RULES)}, got {ties!r}")
    d = decide(scores, [i.label for i in items], seed)
    out: dict[str, Any] = {"headline_by_ties": {}}
    for rule in TIE_RULES:
        groups: dict[str, list[float]] = {}
        for item, credit, tie in zip(items, d.credit[rule], d.tie, strict=True):
            g = groups.setdefault(item.group, [0.0, 0, 0])
            g[0], g[1], g[2] = g[0] + credit, g[1] + 1, g[2] + tie
        stats = {k: {"accuracy": c / n, "n": n, "ties": t} for k, (c, n, t) in sorted(groups.items())}
        headline, mid = _headline(task, stats)
        out["headline_by_ties"][rule] = headline
        if rule == ties:
            out["groups"], out["headline"] = stats, headline
            if mid:
                out["splits" if task == "entity_tracking" else "sets"] = mid
    if task == "global_piqa":  # one group per example: keep the sets, not 200 one-item rows
        out["groups"] = {s: {"accuracy": acc, "n": sum(1 for i in items if i.group.startswith(s + "/")),
                             "ties": sum(t for i, t in zip(items, d.tie, strict=True) if i.group.startswith(s + "/"))}
                         for s, acc in out["sets"].items()}
    out["accuracy"] = _mean(d.credit[ties])
    out["n_items"] = len(items)
    out["ties"] = sum(d.tie)
    out["chosen"] = [_chosen(s, i.label, c) for s, i, c in zip(scores, items, d.credit[ties], strict=True)]
    return out


def _chosen(scores: list[float], label: int, credit: float) -> int:
    """The candidate counted as the answer: the correct one when it earned full credit, else the best other."""
    if credit >= 1.0 or len(scores) < 2:
        return label
    others = [(-math.inf if math.isnan(x) else x, i) for i, x in enumerate(scores) if i != label]
    return max(others, key=lambda t: (t[0], -t[1]))[1]


def evaluate_completions(
    task: str,
    model_dir: str | Path,
    data: str | Path,
    *,
    context_prefix: Literal["eos", "bos", "none", "tokenizer"] = "none",
    ties: str = "correct",
    seed: int = 0,
    truncate: bool = True,
    ewok_pairing: Literal["targets", "contexts"] = "targets",
    entity_skip_nothing: bool = False,
    batch_size: int = 64,
    device: str | None = None,
) -> dict[str, Any]:
    """Score every item of ``task`` (ewok, entity_tracking, comps, global_piqa) under ``data`` (schema above)."""
    if task not in TASKS:
        raise UserError(f"unknown completion task {task!r} (known: {', '.join(TASKS)})")
    items, skipped = load_items(task, data, ewok_pairing=ewok_pairing, skip_nothing=entity_skip_nothing)
    if not items:
        raise UserError(f"{data}: no {task} items left to score ({skipped} skipped)")
    model, tokenizer = load_causal_lm(model_dir, resolve_device(device))
    pid = prefix_token_id(tokenizer, model.config, context_prefix, model_dir)
    flat = [o for item in items for o in item.options]
    ids, spans = encode_options(tokenizer, flat, context_prefix)
    flat_scores = score_sequences(model, ids, prefix_id=pid, batch_size=batch_size, progress=True, spans=spans,
                                  truncate=truncate, reduction="mean" if task == "global_piqa" else "sum")
    scores, start = [], 0
    for item in items:
        scores.append(flat_scores[start : start + len(item.options)])
        start += len(item.options)
    note = length_note(model.config, [len(x) + (pid is not None) for x in ids], truncate)
    protocol = {"context_prefix": context_prefix, "prefix_token_id": pid, "ties": ties, "seed": seed,
                "ties_correct": ties == "correct", "truncate": truncate}
    if task == "ewok":
        protocol["ewok_pairing"] = ewok_pairing
    if task == "entity_tracking":
        protocol["entity_skip_nothing"] = entity_skip_nothing
    result = {"task": task, "model": str(model_dir), "data": str(data), "protocol": protocol,
              "notes": [note] if note else []}
    result.update(aggregate(task, items, scores, ties, seed))
    result["skipped"] = skipped
    return result


def format_completion_table(result: dict[str, Any]) -> str:
    """Markdown: accuracy (%) per group (and split or set), and the headline."""
    proto = result["protocol"]
    lines = [f"{result['task']}: {result['model']} on {result['data']}",
             f"(context prefix {proto['context_prefix']}, ties {tie_rule(proto)})", *result.get("notes", []), "",
             "| group | accuracy | items | ties |", "|---|---:|---:|---:|"]
    lines += [f"| {k} | {100 * v['accuracy']:.1f} | {v['n']} | {v['ties']} |" for k, v in result["groups"].items()]
    for split, acc in result.get("splits", {}).items():
        lines.append(f"| split {split} | {100 * acc:.1f} | | |")
    lines.append(f"| **headline** | {100 * result['headline']:.1f} | {result['n_items']} | {result['ties']} |")
    if result.get("skipped"):
        lines.append(f"| skipped (an option contains \"nothing\") | | {result['skipped']} | |")
    lines += tie_lines(result)
    return "\n".join(lines)
