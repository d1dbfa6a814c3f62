"""Parity with the official BabyLM 2025/2026 zero-shot scorers: per item, our log-probs and decisions against theirs.

The official code (``babylm/evaluation-pipeline-2025``; ``babylm-org/babylm-eval`` ``strict/``, July 2026)
is not published on the package index, so its causal-LM path is restated here, and only here, from
reading the repositories (``sentence_zero_shot/read_files.py``, ``dataset.py``, ``compute_results.py``,
``run.py``): each candidate text is tokenized with the tokenizer's own special tokens and offsets; the
scored tokens are those whose character span ends after the completion's first character, minus the
first token; items are batched in file order, right-padded with the pad (else end) token, run without
position ids, and scored as the masked sum of log-softmax (GlobalPIQA: divided by the mask's size).
2025 picks ``torch.max``'s index; 2026 turns NaN into -inf and draws a tied winner with ``torch.randint``
from the global generator (seeded here with the same seed we give ``eval.seed``). Headlines are the
pipelines' means (over UID; entity tracking over splits; GlobalPIQA per set, then our mean of the sets).
Files are read in name order (upstream: the file system's order, which only moves tie draws).

Data: the real BLiMP (``--data``, the first ``--per-paradigm`` pairs of each of the 67 paradigms) and,
for the tasks whose data is gated here, official-format files written from BLiMP sentences: EWoK rows
(a few with Context1 = Context2 or Target1 = Target2, which tie), entity-tracking rows (some far longer
than the model's 128 positions, a third with a " nothing." option), COMPS rows, GlobalPIQA parallel
(4 solutions) and non-parallel (2) sets, WUG adjective / past-tense files (2025: the model's share of the
first sentence, softmax over the summed log-probs, against people's ratios by scipy's Spearman, as
``rank_and_evaluate_wug`` and ``calculate_results_from_pred._calculate_wug_results``), and a reading_data.csv with made-up times (the reading task's
surprisal one forward pass per token as ``reading/evaluation_functions.get_p2``, its scores with pandas
and statsmodels as ``reading/run.py`` when they are installed). Models: the demo student (``runs/demo``, else a random LLaMA of
its size), once with its own tokenizer (adds no special tokens) and once with a tokenizer that adds
``<s>``. For every task, rule (2025, 2026) and model we print the items, the ties (items whose correct
candidate shares the top score), the largest |Δ log-prob| over all candidates, the decisions that
differ, and both headlines; our headline comes from the same entry
point ``babyllama run`` uses.

    python benchmarks/bench_official_parity.py --data ../shared/data/blimp
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from babyllama.evaluate.blimp import evaluate_blimp, load_pairs, official_inputs, score_sequences
from babyllama.evaluate.completions import encode_options, evaluate_completions, load_items
from babyllama.evaluate.decide import decide
from babyllama.evaluate.formats import load_causal_lm
from babyllama.evaluate.reading import evaluate_reading, read_rows, surprisals
from babyllama.evaluate.wug import evaluate_wug, load_wug

sys.path.insert(0, str(Path(__file__).parent))
from bench_blimp import demo_model_dir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
PIQA_SETS = {"global_piqa_parallel": 4, "global_piqa_nonparallel": 2}
WUG = {"wug_adj": "wug_adj_nominalization", "wug_past": "wug_past_tense"}  # task -> official folder and file stem


# -- the official causal scorer, restated ----------------------------------------------------------------


def _official_decode(task: str, path: Path, row: dict[str, Any], year: int) -> dict[str, Any] | None:
    """(sentences, completions, label, uid) of one row, as read_files.decode builds them."""
    if task == "blimp":
        s = [row["sentence_good"], row["sentence_bad"]]
        return {"sentences": s, "completions": s, "label": 0, "uid": row.get("UID", path.stem)}
    if task == "ewok":
        c1, c2, t1, t2 = row["Context1"], row["Context2"], row["Target1"], row["Target2"]
        if year == 2026:
            return {"sentences": [f"{c1} {t1}", f"{c2} {t1}"], "completions": [" " + t1] * 2, "label": 0, "uid": row["Domain"]}
        return {"sentences": [f"{c1} {t1}", f"{c1} {t2}"], "completions": [" " + t1, " " + t2], "label": 0, "uid": row["Domain"]}
    if task == "entity_tracking":
        if year == 2026 and any("nothing" in o for o in row["options"]):
            return None
        return {"sentences": [row["input_prefix"] + o for o in row["options"]], "completions": list(row["options"]),
                "label": 0, "uid": f"{path.stem}_{row['numops']}_ops"}
    if task in WUG:  # decode_wug: the tab-joined sentences, scored whole
        s = row["sentences"].split("\t")
        return {"sentences": s, "completions": s, "label": 0, "uid": task, "ratio": float(row["ratio"])}
    if task == "comps":
        subset = {"comps_base": "base", "comps_wugs": "wugs"}.get(path.stem, "other")
        phrase = row["property_phrase"]
        return {"sentences": [f"{row['prefix_acceptable']} {phrase}", f"{row['prefix_unacceptable']} {phrase}"],
                "completions": [phrase, phrase], "label": 0, "uid": subset}
    sols = [row[f"solution{i}"] for i in range(PIQA_SETS[path.parent.name])]
    return {"sentences": [f"{row['prompt']} {s}" for s in sols], "completions": [" " + s for s in sols],
            "label": row["label"], "uid": row["example_id"]}


def _official_encode(tok: Any, sentence: str, completion: str) -> tuple[torch.Tensor, torch.Tensor]:
    out = tok(sentence, return_offsets_mapping=True)
    offsets = out["offset_mapping"]
    start_char = len(sentence) - len(completion) + offsets[0][0]
    mask = [1 if end > start_char else 0 for _, end in offsets]
    return torch.tensor(out["input_ids"]), torch.tensor(mask)


@torch.no_grad()
def official_run(model: Any, tok: Any, items: list[dict[str, Any]], normalise: bool, year: int,
                 batch_size: int = 64) -> tuple[list[list[float]], list[bool]]:
    """Per item: every candidate's score and whether the official rule picks the correct one."""
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    torch.manual_seed(SEED)
    scores: list[list[float]] = []
    correct: list[bool] = []
    for b in range(0, len(items), batch_size):
        batch = items[b : b + batch_size]
        per_candidate = []
        for k in range(len(batch[0]["sentences"])):
            enc = [_official_encode(tok, it["sentences"][k], it["completions"][k]) for it in batch]
            tokens = pad_sequence([t for t, _ in enc], batch_first=True, padding_value=pad)
            attn = pad_sequence([torch.ones_like(t) for t, _ in enc], batch_first=True, padding_value=0)[:, :-1]
            phrase = pad_sequence([m for _, m in enc], batch_first=True, padding_value=0)[:, 1:]
            logits = model(input_ids=tokens[:, :-1], attention_mask=attn).logits
            logp = F.log_softmax(logits, dim=-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
            s = (logp * phrase).sum(1)
            per_candidate.append(s / phrase.sum(1).clamp(min=1) if normalise else s)
        stacked = torch.stack(per_candidate, dim=1)
        if year == 2026:
            stacked = torch.where(torch.isnan(stacked), torch.tensor(float("-inf")), stacked)
            best = stacked.max(dim=1).values
            chosen = []
            for i in range(len(batch)):
                top = torch.where(stacked[i] == best[i])[0]
                chosen.append(top[torch.randint(len(top), (1,))].item() if len(top) > 1 else top[0].item())
        else:
            chosen = stacked.max(dim=1)[1].tolist()
        scores += stacked.tolist()
        correct += [c == it["label"] for c, it in zip(chosen, batch, strict=True)]
    return scores, correct


def official_headline(task: str, items: list[dict[str, Any]], correct: list[bool]) -> float:
    acc: dict[str, list[int]] = {}
    for it, ok in zip(items, correct, strict=True):
        acc.setdefault(it["uid"], []).append(ok)
    per_uid = {k: 100 * sum(v) / len(v) for k, v in acc.items()}
    if task == "entity_tracking":
        splits = [[a for k, a in per_uid.items() if k.startswith(s)] for s in ("regular", "ambiref", "move_contents")]
        return sum(sum(s) / len(s) for s in splits if s) / sum(1 for s in splits if s)
    return sum(per_uid.values()) / len(per_uid)


def official_items(task: str, folder: Path, year: int) -> list[dict[str, Any]]:
    items = []
    for path in sorted(folder.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            item = _official_decode(task, path, json.loads(line), year)
            if item is not None:
                items.append(item)
    return items


# -- ours ------------------------------------------------------------------------------------------------


def our_run(model: Any, tok: Any, task: str, folder: Path, year: int) -> tuple[list[list[float]], list[float], int]:
    """Per item: every candidate's score and its credit under the year's tie rule, from our building blocks;
    and how many items tied with the correct candidate."""
    if task == "blimp":
        pairs, _ = load_pairs(folder)
        texts = [p.good for p in pairs] + [p.bad for p in pairs]
        ids, spans = official_inputs(tok, texts, texts)
        flat = score_sequences(model, ids, prefix_id=None, spans=spans, truncate=False)
        scores, labels = [[g, b] for g, b in zip(flat[: len(pairs)], flat[len(pairs) :], strict=True)], [0] * len(pairs)
    else:
        items, _ = load_items(task, folder, ewok_pairing="contexts" if year == 2026 else "targets",
                              skip_nothing=year == 2026)
        options = [o for it in items for o in it.options]
        ids, spans = encode_options(tok, options, "tokenizer")
        flat = score_sequences(model, ids, prefix_id=None, spans=spans, truncate=False,
                               reduction="mean" if task == "global_piqa" else "sum")
        scores, at = [], 0
        for it in items:
            scores.append(flat[at : at + len(it.options)])
            at += len(it.options)
        labels = [it.label for it in items]
    d = decide(scores, labels, SEED)
    return scores, d.credit["random" if year == 2026 else "correct"], sum(d.tie)


def our_headline(model_dir: Path, task: str, folder: Path, year: int) -> float:
    """The headline through the entry point `babyllama run` uses (100 x fraction)."""
    if task == "blimp":
        r = evaluate_blimp(model_dir, folder, prefix="tokenizer", leading_space=False, aggregation="paradigms",
                           ties="random" if year == 2026 else "correct", seed=SEED, truncate=False, device="cpu")
    else:
        r = evaluate_completions(task, model_dir, folder, context_prefix="tokenizer", truncate=False, seed=SEED,
                                 ties="random" if year == 2026 else "correct",
                                 ewok_pairing="contexts" if year == 2026 else "targets",
                                 entity_skip_nothing=year == 2026, device="cpu")
    return 100 * r["headline"]


# -- the WUG tasks (2025), restated ------------------------------------------------------------------------


def official_wug(model: Any, tok: Any, task: str, folder: Path) -> tuple[list[list[float]], list[float], float]:
    """compute_results.rank_and_evaluate_wug: softmax over each item's summed log-probs (float32) at the first
    sentence, then calculate_results_from_pred: scipy's spearmanr against the file's ratios, x 100."""
    from scipy.stats import spearmanr

    items = official_items(task, folder, 2025)
    scores, _ = official_run(model, tok, items, False, 2025)
    probs = torch.softmax(torch.tensor(scores, dtype=torch.float32), dim=1)[:, 0].tolist()
    return scores, probs, 100 * spearmanr(probs, [it["ratio"] for it in items])[0]


def compare_wug(model_dir: Path, task: str, folder: Path) -> dict[str, Any]:
    from scipy.stats import spearmanr

    model, tok = load_causal_lm(model_dir, torch.device("cpu"))
    theirs, their_probs, their_rho = official_wug(model, tok, task, folder)
    items = load_wug(folder, task)
    ids, spans = encode_options(tok, [(c, c) for cands, _ in items for c in cands], "tokenizer")
    flat = score_sequences(model, ids, prefix_id=None, spans=spans, truncate=False)
    ours = evaluate_wug(task, model_dir, folder, device="cpu")  # the entry point `babyllama run` uses
    return {"items": len(items), "max_dlogp": max(abs(a - b) for a, b in zip(flat, [x for r in theirs for x in r], strict=True)),
            "max_dratio": max(abs(a - b) for a, b in zip(ours["model_ratios"], their_probs, strict=True)),
            "agreement": spearmanr(ours["model_ratios"], their_probs)[0], "flips": _flips(ours["model_ratios"], their_probs),
            "ours": 100 * ours["headline"], "official": their_rho}


def _flips(a: list[float], b: list[float]) -> list[tuple[float, float, float, float]]:
    """Pairs of items ranked differently by the two lists of model ratios (one order, or one tie, but not both)."""
    n = len(a)
    return [(a[i], a[j], b[i], b[j]) for i in range(n) for j in range(i + 1, n)
            if (a[i] - a[j]) * (b[i] - b[j]) < 0 or (a[i] == a[j]) != (b[i] == b[j])]


def _write_wug(root: Path, pairs: list[Any], rng: random.Random) -> None:
    """Official-format WUG files (200 and 50 items) from BLiMP pairs: ratios on a 0.05 grid (people's ratios tie
    often) and a few items whose two sentences are the same (the model's ratio is then exactly 0.5: tied ranks)."""
    for task, n in (("wug_adj", 200), ("wug_past", 50)):
        rows = [{"sentences": f"{p.good}\t{p.good if i % 25 == 0 else p.bad}", "ratio": round(rng.randrange(21) * 0.05, 2)}
                for i, p in enumerate(rng.sample(pairs, n))]
        _write(root / WUG[task] / f"{WUG[task]}.jsonl", rows)


# -- the reading task, restated ---------------------------------------------------------------------------


@torch.no_grad()
def official_surprisal(model: Any, tok: Any, context: str, word: str) -> float:
    """reading/evaluation_functions.get_p2 for a causal LM: one forward pass per token of the word."""
    def p_next(text: str, piece_id: int) -> float:
        logits = model(**tok(text, return_tensors="pt")).logits[:, -1, :]
        return torch.softmax(logits[0], dim=-1)[piece_id].item()

    target = tok(word, add_special_tokens=False)["input_ids"]
    probs = [p_next(context, target[0])]
    text = context + tok.decode(target[0])
    for t in target[1:]:
        piece = tok.decode(t)
        probs.append(p_next(text, tok(piece, add_special_tokens=False)["input_ids"][0]))
        text += piece
    return -math.log(float(np.prod(probs)))


def official_reading_scores(path: Path, pred: list[float], prev_pred: list[float]) -> tuple[float, float] | None:
    """reading/run.py's two scores with pandas and statsmodels (None when they are not installed)."""
    try:
        import pandas as pd
        import statsmodels.formula.api as smf
    except ImportError:
        return None
    df = pd.read_csv(path, dtype={"item": str})
    df["pred"], df["prev_pred"] = pred, prev_pred
    base = "Subtlex_log10 + length + context_length + Subtlex_log10:length + Subtlex_log10:context_length + length:context_length"
    eye = []
    for dv in ("RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound"):
        r2b = smf.ols(f"{dv} ~ {base}", data=df[[dv, "Subtlex_log10", "length", "context_length"]].dropna()).fit().rsquared
        r2m = smf.ols(f"{dv} ~ {base} + pred", data=df[["pred", dv, "Subtlex_log10", "length", "context_length"]].dropna()).fit().rsquared
        eye.append(100 * (r2m - r2b) / (1 - r2b))
    cols = ["Subtlex_log10", "length", "context_length", "prev_length", "prev_pred"]
    spill = " + ".join(cols + [f"{a}:{b}" for i, a in enumerate(cols) for b in cols[i + 1 :]])
    dv = "self_paced_reading_time"
    r2b = smf.ols(f"{dv} ~ {spill}", data=df[[dv, *cols]].dropna()).fit().rsquared
    r2m = smf.ols(f"{dv} ~ {spill} + pred", data=df[["pred", dv, *cols]].dropna()).fit().rsquared
    return sum(eye) / len(eye), 100 * (r2m - r2b) / (1 - r2b)


def compare_reading(model_dir: Path, path: Path) -> dict[str, Any]:
    model, tok = load_causal_lm(model_dir, torch.device("cpu"))
    rows = read_rows(path)
    theirs = [official_surprisal(model, tok, r["item"], r["word"]) for r in rows]
    prev = [official_surprisal(model, tok, r["prev_item"], r["prev_word"]) if r["prev_item"] else math.nan for r in rows]
    ours = evaluate_reading(model_dir, path, device="cpu")
    mine = surprisals(model, tok, [(r["item"], r["word"]) for r in rows])
    scores = official_reading_scores(path, theirs, prev)
    return {"items": len(rows), "max_dlogp": max(abs(a - b) for a, b in zip(mine, theirs, strict=True)),
            "ours": (ours["eye_tracking"], ours["self_paced"]), "official": scores}


# -- data and models -------------------------------------------------------------------------------------


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_data(blimp: Path, root: Path, per_paradigm: int, n: int) -> dict[str, list[Path]]:
    """Official-format folders under ``root``: a BLiMP subset and files built from BLiMP sentences."""
    pairs, _ = load_pairs(blimp)
    by: dict[str, list] = {}
    for p in pairs:
        by.setdefault(p.paradigm, []).append(p)
    for name, group in by.items():
        _write(root / "blimp" / f"{name}.jsonl", [{"sentence_good": p.good, "sentence_bad": p.bad, "field": p.field,
                                                   "UID": p.paradigm, "linguistics_term": p.phenomenon}
                                                  for p in group[:per_paradigm]])
    rng = random.Random(SEED)
    good = [p.good for p in pairs]
    pick = rng.choice
    ewok = [{"Domain": pick(["agent-properties", "social-relations", "physical-relations", "material-dynamics"]),
             "Context1": pick(good), "Context2": pick(good), "Target1": p.good, "Target2": p.bad,
             "ContextType": "general", "ContextDiff": "x", "TargetDiff": "y"} for p in rng.sample(pairs, n)]
    for row in ewok[:5]:
        row["Context2"] = row["Context1"]  # a tie under the 2026 pairing
    for row in ewok[5:10]:
        row["Target2"] = row["Target1"]  # a tie under the 2025 pairing
    for domain in {r["Domain"] for r in ewok}:
        _write(root / "ewok" / f"{domain}.jsonl", [r for r in ewok if r["Domain"] == domain])
    for split in ("regular", "ambiref", "move_contents"):
        rows = []
        for i in range(n // 3):
            context = " ".join(pick(good) for _ in range(rng.randint(1, 30))) + " Box 1 contains"
            options = [" " + pick(good).lower() for _ in range(3)]
            if i % 3 == 0:
                options[rng.randrange(3)] = " nothing."
            rows.append({"input_prefix": context, "options": options, "numops": i % 3, "sample_id": i})
        _write(root / "entity_tracking" / f"{split}.jsonl", sorted(rows, key=lambda r: r["numops"]))
    for stem in ("comps_base", "comps_wugs"):
        _write(root / "comps" / f"{stem}.jsonl", [{"prefix_acceptable": p.good.rstrip("."), "prefix_unacceptable":
                                                    p.bad.rstrip("."), "property_phrase": pick(good).lower()}
                                                   for p in rng.sample(pairs, n // 2)])
    for name, k in PIQA_SETS.items():
        _write(root / name / "eng_latn.jsonl", [{"example_id": f"eng_latn_{name}_{i}", "prompt": pick(good), "label":
                                                 rng.randrange(k), **{f"solution{j}": pick(good) for j in range(k)}}
                                                for i in range(103 if k == 4 else 100)])
    _write_reading(root / "reading" / "reading_data.csv", [p.good for p in rng.sample(pairs, 60)], rng)
    _write_wug(root, pairs, rng)
    return {"blimp": [root / "blimp"], "ewok": [root / "ewok"], "entity_tracking": [root / "entity_tracking"],
            "comps": [root / "comps"], "global_piqa": [root / name for name in PIQA_SETS]}


def _write_reading(path: Path, sentences: list[str], rng: random.Random) -> None:
    """reading_data.csv rows (one per word after the first) with made-up times that follow length and position."""
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item", "word", "prev_item", "prev_word", "RTfirstfix", "RTfirstpass", "RTgopast", "RTrightbound",
                    "self_paced_reading_time", "Subtlex_log10", "length", "context_length", "prev_length"])
        for s in sentences:
            words = s.split(" ")
            for i in range(1, len(words)):
                item, word = " ".join(words[:i]), " " + words[i]
                prev = (" ".join(words[: i - 1]), " " + words[i - 1]) if i > 1 else ("", "")
                times = [200 + 15 * len(word) + 5 * i + rng.gauss(0, 40) for _ in range(5)]
                w.writerow([item, word, *prev, *(f"{t:.1f}" for t in times), f"{rng.uniform(0, 5):.3f}", len(word) - 1,
                            i, len(prev[1]) - 1 if prev[1] else ""])


def with_bos_tokenizer(model_dir: Path, out: Path) -> Path:
    """The same weights with a tokenizer that puts <s> before every text, as many checkpoints' tokenizers do."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    # Without checkpoint.json: its sha256 sums name the old tokenizer, so the check on load would call it damaged.
    shutil.copytree(model_dir, out, ignore=shutil.ignore_patterns("tokenizer*", "special_tokens_map.json", "checkpoint.json"))
    tok = AutoTokenizer.from_pretrained(model_dir)
    bos = tok.bos_token or "<s>"
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))])
    tok.save_pretrained(out)
    return out


def compare(model_dir: Path, task: str, folder: Path, year: int) -> dict[str, Any]:
    model, tok = load_causal_lm(model_dir, torch.device("cpu"))
    ours, our_credit, ties = our_run(model, tok, task, folder, year)
    items = official_items("global_piqa" if task == "global_piqa" else task, folder, year)
    theirs, their_ok = official_run(model, tok, items, task == "global_piqa", year)
    assert len(ours) == len(theirs), f"{task}: {len(ours)} items against {len(theirs)}"
    delta = max(abs(a - b) for x, y in zip(ours, theirs, strict=True) for a, b in zip(x, y, strict=True))
    return {"items": len(ours), "max_dlogp": delta, "ties": ties,
            "decisions_differ": sum(bool(c) != ok for c, ok in zip(our_credit, their_ok, strict=True)),
            "ours": our_headline(model_dir, task, folder, year), "official": official_headline(task, items, their_ok)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = next((p for p in (ROOT.parent / "shared", ROOT.parents[1] / "shared") if p.is_dir()), ROOT.parent / "shared")
    ap.add_argument("--data", default=str(shared / "data" / "blimp"), help="the real BLiMP (67 .jsonl files)")
    ap.add_argument("--per-paradigm", type=int, default=100, help="BLiMP pairs per paradigm")
    ap.add_argument("--items", type=int, default=300, help="rows per written task (EWoK, entity tracking, COMPS)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--only", nargs="+", default=None, help="only these rows (blimp, ewok, ..., reading, wug_adj, wug_past)")
    args = ap.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the official scorer's long inputs warn on every call
    if not Path(args.data).is_dir():
        print(f"{args.data}: no BLiMP folder here (pass --data); skipped", file=sys.stderr)
        sys.exit(2)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = write_data(Path(args.data), root / "data", args.per_paradigm, args.items)
        sentences = [p.good for p in load_pairs(root / "data" / "blimp")[0]]
        plain, what = demo_model_dir(root, sentences)
        models = {"own tokenizer": plain, "tokenizer adds <s>": with_bos_tokenizer(plain, root / "bos")}
        print(f"model: {what}\n")
        print("| model | task | rule | items | ties | max abs Δ log-prob | decisions differ (WUG: item pairs ranked apart) | ours % | official % |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for label, model_dir in models.items():
            for task, folders in data.items():
                if args.only and task not in args.only:
                    continue
                for folder in folders:
                    for year in (2025, 2026):
                        if task == "global_piqa" and year == 2025:
                            continue  # new in 2026
                        r = compare(model_dir, task, folder, year)
                        name = folder.name if task == "global_piqa" else task
                        print(f"| {label} | {name} | {year} | {r['items']} | {r['ties']} | {r['max_dlogp']:.2e} | "
                              f"{r['decisions_differ']} | {r['ours']:.2f} | {r['official']:.2f} |", flush=True)
            for task in WUG:
                if args.only and task not in args.only:
                    continue
                r = compare_wug(model_dir, task, root / "data" / WUG[task])
                print(f"| {label} | {task} (Spearman ρ %) | 2025 | {r['items']} | – | {r['max_dlogp']:.2e} (model ratio "
                      f"{r['max_dratio']:.1e}; ratios' ρ ours vs theirs {r['agreement']:.6f}) | {len(r['flips'])} item "
                      f"pairs ranked apart{' e.g. ' + str(r['flips'][0]) if r['flips'] else ''} | {r['ours']:.4f} | "
                      f"{r['official']:.4f} |", flush=True)
            if args.only and "reading" not in args.only:
                continue
            r = compare_reading(model_dir, root / "data" / "reading" / "reading_data.csv")
            theirs = "{:.6f} / {:.6f}".format(*r["official"]) if r["official"] else "statsmodels not installed"
            print(f"| {label} | reading (eye / self-paced ΔR² %) | 2025, 2026 | {r['items']} words | – | {r['max_dlogp']:.2e} "
                  f"(surprisal) | – | {r['ours'][0]:.6f} / {r['ours'][1]:.6f} | {theirs} |", flush=True)


if __name__ == "__main__":
    main()
