"""`babyllama export MODEL --format babylm-submission --to DIR`: what the BabyLM 2025/2026 organisers ask for.

Read from the official repositories (evaluation-pipeline-2025 and babylm-eval ``strict/``: README "Submission
Requirements", ``collate_preds.py``, ``eval_zero_shot_fast_all_revisions.sh``):

- the final model and one model per checkpoint, uploaded as branches ``chck_1M`` ... ``chck_9M``,
  ``chck_10M`` ... ``chck_100M`` (strict-small; other tracks go on ``chck_200M`` ... ``chck_1000M``), up to
  the words the model was trained on;
- the results tree the pipeline writes, ``results/<model>/<revision>/zero_shot/causal/<task>/<set>/
  predictions.json`` (``{subtask: {"predictions": [{"id": "<subtask>_<i>", "pred": ...}]}}``, with
  ``best_temperature_report.txt``) and ``results/<model>/main/finetune/<task>/predictions.json`` and
  ``results.txt``;
- the collated file ``results/<model>/all_full_preds_and_fast_scores_causal.json``: the final model's
  predictions per benchmark, and ``fast_eval_results``, one score dict per checkpoint and fast task.

Layout written (``DIR``): ``main/`` (the final model), ``chck_<N>M/`` (checkpoints, from train.save_at_words),
``results/`` as above, ``submission.json`` (what is included, for the check) and ``README.md`` (the card).
Everything is read from the run's own files; a zero-shot prediction is rebuilt from the scored data (the
result's ``data``) and the per-item decisions the result holds. `babyllama check-submission DIR` (and this
export, before it publishes) checks the folder (export/submission_check.py).
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from pathlib import Path
from typing import Any

from babyllama.config import AT_WORDS_DIR, STRICT_SMALL_BUDGET
from babyllama.errors import UserError
from babyllama.export.babylm_layout import (
    BACKEND,
    MANIFEST,
    NOT_SCORED,
    ZERO_SHOT,
    required_revisions,
    revision_name,
    track,
)
from babyllama.export.record import ModelRecord, load_record
from babyllama.export.submission_card import render_submission_card
from babyllama.export.submission_check import check_submission
from babyllama.io import atomic_path, atomic_write_json
from babyllama.protocols import BABYLM_2025_TASKS

# -- predictions in the official format -------------------------------------------------------------------


def blimp_predictions(result: dict[str, Any]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{paradigm: {"predictions": [{"id", "pred": chosen sentence}]}} rebuilt from the scored data and the
    result's per-pair decisions (``items``: per phenomenon, in data order)."""
    from babyllama.evaluate.blimp import load_pairs, resolve_data

    pairs, _ = load_pairs(resolve_data(result["data"]))
    items, seen = result.get("items") or {}, defaultdict(int)
    if sum(len(v) for v in items.values()) != len(pairs):
        raise UserError(f"{result['data']}: holds {len(pairs)} pairs but the result scored "
                        f"{sum(len(v) for v in items.values())}; evaluate again before exporting")
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for p in pairs:
        k = seen[p.phenomenon]
        seen[p.phenomenon] += 1
        preds = out.setdefault(p.paradigm, {"predictions": []})["predictions"]
        preds.append({"id": f"{p.paradigm}_{len(preds)}", "pred": p.good if items[p.phenomenon][k] == "1" else p.bad})
    return out


def completion_predictions(task: str, result: dict[str, Any]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """{group: {"predictions": [{"id", "pred": chosen completion}]}} from the data and the result's ``chosen``."""
    from babyllama.evaluate.completions import load_items

    proto = result.get("protocol") or {}
    items, _ = load_items(task, result["data"], ewok_pairing=proto.get("ewok_pairing", "targets"),
                          skip_nothing=bool(proto.get("entity_skip_nothing", False)))
    chosen = result.get("chosen")
    if not isinstance(chosen, list) or len(chosen) != len(items):
        raise UserError(f"{result['data']}: the {task} result has no per-item choices for these {len(items)} items; "
                        "evaluate again before exporting")
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for item, c in zip(items, chosen, strict=True):
        preds = out.setdefault(item.group, {"predictions": []})["predictions"]
        preds.append({"id": f"{item.group}_{len(preds)}", "pred": item.options[c][1].strip()})
    return out


def zero_shot_predictions(task: str, result: dict[str, Any]) -> dict[str, Any]:
    return blimp_predictions(result) if task in ("blimp", "supplement") else completion_predictions(task, result)


def subtask_scores(task: str, result: dict[str, Any]) -> dict[str, float]:
    """Per-subtask accuracy (fraction), as collate_preds' fast_eval_results hold them."""
    group = result.get("paradigms") if task in ("blimp", "supplement") else result.get("groups")
    return {k: v["accuracy"] for k, v in (group or {}).items()}


def temperature_report(task: str, result: dict[str, Any]) -> str:
    """best_temperature_report.txt as the official zero-shot runner writes it (temperature 1)."""
    lines = ["TEMPERATURE: 1.00", "", "### UID ACCURACY"]
    lines += [f"{k}: {100 * v:.2f}" for k, v in subtask_scores(task, result).items()]
    return "\n".join([*lines, "", "### AVERAGE ACCURACY", f"{100 * result['headline']:.2f}", "", ""])


def finetune_files(task: str, result: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """(predictions.json, results.txt) of one fine-tuning task, in the official runner's format."""
    preds = result.get("predictions")
    if not isinstance(preds, list):
        raise UserError(f"finetune/{task}.json: no predictions in this result; run the fine-tuning again to export it")
    metrics = result.get("metrics") or {result["metric"]: result["score"]}
    return ({task: {"predictions": [{"id": f"{task}_{i}", "pred": int(p)} for i, p in enumerate(preds)]}},
            "\n".join(f"{k}: {v}" for k, v in metrics.items()))


# -- gathering what the run recorded ----------------------------------------------------------------------


def _checkpoints(rec: ModelRecord) -> dict[str, tuple[Path, dict[str, Any]]]:
    """{revision: (checkpoint folder, {task: result})} of the official-schedule checkpoints the run kept."""
    assert rec.run_dir is not None
    folder = rec.run_dir / "checkpoints" / rec.name / AT_WORDS_DIR
    curve = rec.results.get("curve") or {}
    by_words = {int(p.get("words", -1)): p.get("results") or {} for p in curve.get("points") or []}
    out = {}
    for ck in sorted((p for p in folder.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)) if folder.is_dir() else []:
        name = revision_name(int(ck.name))
        if name is not None and (ck / "config.json").is_file():
            out[name] = (ck, by_words.get(int(ck.name), {}))
    return out


def gather(rec: ModelRecord) -> dict[str, Any]:
    """Everything a submission holds, as read from the run: settings, final results, checkpoints."""
    if rec.run_dir is None:
        raise UserError(f"{rec.model_dir}: not inside a babyllama run (<out_dir>/models/<name>/ with <out_dir>/config.yaml); "
                        "a submission needs the run's evaluation results")
    if rec.config_problem:
        raise UserError(f"{rec.run_dir / 'config.yaml'}: {rec.config_problem}")
    budget = int(((rec.run_config or {}).get("data") or {}).get("word_budget", STRICT_SMALL_BUDGET))
    words = float((rec.training or {}).get("words_seen", 0))
    zero = {t: rec.results[t] for t in ZERO_SHOT if t in rec.results and t in rec.headlines}
    fine = {k.removeprefix("finetune/"): r for k, r in rec.results.items() if k.startswith("finetune/") and "score" in r}
    return {"name": rec.name, "protocol": rec.protocol or "babyllama", "word_budget": budget, "track": track(budget),
            "words_seen": words, "zero_shot": zero, "headlines": rec.headlines, "finetune": fine,
            "checkpoints": _checkpoints(rec), "required": required_revisions(budget, words)}


# -- writing ----------------------------------------------------------------------------------------------

MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _copy_model(src: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    for name in MODEL_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dest / name)
    for shard in src.glob("model-*.safetensors"):
        shutil.copy2(shard, dest / shard.name)


def _write_zero_shot(root: Path, task: str, sub: str, result: dict[str, Any]) -> dict[str, Any]:
    preds = zero_shot_predictions(task, result)
    atomic_write_json(root / BACKEND / sub / "predictions.json", preds)
    (root / BACKEND / sub / "best_temperature_report.txt").write_text(temperature_report(task, result), encoding="utf-8")
    return preds


def write_results(tmp: Path, g: dict[str, Any]) -> dict[str, Any]:
    """The results tree and the collated file; returns the manifest's record of what was written."""
    res = tmp / "results" / g["name"]
    collated: dict[str, Any] = {}
    for task, result in g["zero_shot"].items():
        key, full, _ = ZERO_SHOT[task]
        collated[key] = _write_zero_shot(res / "main" / "zero_shot", task, full, result)
    if g["finetune"]:
        collated["glue"] = {}
    for task, result in g["finetune"].items():
        preds, text = finetune_files(task, result)
        atomic_write_json(res / "main" / "finetune" / task / "predictions.json", preds)
        (res / "main" / "finetune" / task / "results.txt").write_text(text, encoding="utf-8")
        collated["glue"] |= preds
    fast: dict[str, list[dict[str, float]]] = {}
    fast_tasks = sorted({t for _, results in g["checkpoints"].values() for t in results if ZERO_SHOT[t][2]})
    for rev, (_, results) in g["checkpoints"].items():
        for task in fast_tasks:
            if task in results:
                _write_zero_shot(res / rev / "zero_shot", task, ZERO_SHOT[task][2], results[task])
                fast.setdefault(ZERO_SHOT[task][0], []).append(subtask_scores(task, results[task]))
    if fast:
        collated["fast_eval_results"] = fast
    atomic_write_json(res / f"all_full_preds_and_fast_scores_{BACKEND}.json", collated)
    return {"zero_shot": sorted(g["zero_shot"]), "finetune": sorted(g["finetune"]), "fast": fast_tasks}


def export_submission(model_dir: str | Path, to: str | Path) -> list[Path]:
    """Write the submission folder ``to`` (new or empty) for ``model_dir``; check it, then publish it whole."""
    to = Path(to)
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise UserError(f"--to {to}: exists and is not an empty folder; give a new folder for the submission")
    rec = load_record(model_dir)
    g = gather(rec)
    with atomic_path(to) as tmp:
        tmp.mkdir()
        _copy_model(rec.model_dir, tmp / "main")
        for rev, (ck, _) in g["checkpoints"].items():
            _copy_model(ck, tmp / rev)
        written = write_results(tmp, g)
        manifest = {"format": "babylm-submission", "version": 1, "model": g["name"], "backend": BACKEND,
                    "protocol": g["protocol"], "track": g["track"], "word_budget": g["word_budget"],
                    "words_seen": g["words_seen"], "revisions": list(g["checkpoints"]), "required": g["required"],
                    **written, "not_scored": [*NOT_SCORED, *[t for t in BABYLM_2025_TASKS if t not in g["finetune"]]]}
        atomic_write_json(tmp / MANIFEST, manifest)
        (tmp / "README.md").write_text(render_submission_card(rec, g, manifest), encoding="utf-8")
        check_submission(tmp)
        names = sorted(p.name for p in tmp.iterdir())
    return [to / n for n in names]
