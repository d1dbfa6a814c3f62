"""The README.md of a BabyLM submission folder: protocol, pipeline version and every number with its task set.

Every number comes from the run's result files (the same ones the submission's predictions are built
from); each is listed with the data it was scored on and how many items, so a reader can tell a full set
from a fast one and a babyllama protocol from an official one.
"""

from __future__ import annotations

from typing import Any

import babyllama
from babyllama.export.babylm_layout import ZERO_SHOT
from babyllama.export.record import ModelRecord
from babyllama.protocols import PIPELINES


def _n(result: dict[str, Any]) -> str:
    return f"{result.get('n_pairs', result.get('n_items', '?')):,}" if isinstance(
        result.get("n_pairs", result.get("n_items")), int) else "?"


def _final_rows(g: dict[str, Any]) -> list[str]:
    rows = ["| task | score % | items | set scored (data) |", "|---|---|---|---|"]
    for task, r in g["zero_shot"].items():
        rows.append(f"| {task} | {100 * g['headlines'][task]:.2f} | {_n(r)} | full: `{r.get('data')}` |")
    for task, r in g["finetune"].items():
        rows.append(f"| {task} (fine-tuned) | {100 * r['score']:.2f} {r.get('metric')} | {r.get('n_eval', '?')} | "
                    f"validation: `{r.get('eval_file')}` |")
    accs = [r["metrics"]["accuracy"] for r in g["finetune"].values() if "accuracy" in (r.get("metrics") or {})]
    if accs:
        rows.append(f"| GLUE (mean accuracy of the {len(accs)} tasks above) | {100 * sum(accs) / len(accs):.2f} | | |")
    if len(rows) == 2:
        return ["No verified zero-shot or fine-tuning result for this model (missing, or stale: `babyllama run` "
                "evaluates it again); the submission holds the model only."]
    return rows


def _checkpoint_rows(g: dict[str, Any], fast: list[str]) -> list[str]:
    if not g["checkpoints"]:
        return ["No checkpoint of the official schedule was kept (train.save_at_words: babylm keeps them)."]
    rows = ["| checkpoint | " + " | ".join(f"{t} %" for t in fast) + " |", "|---|" + "---|" * len(fast)]
    for rev, (_, results) in g["checkpoints"].items():
        cells = [f"{100 * results[t]['headline']:.2f}" if t in results else "–" for t in fast]
        rows.append(f"| {rev} | " + " | ".join(cells) + " |")
    sets = {t: r.get("data") for _, results in g["checkpoints"].values() for t, r in results.items()}
    rows += ["", "Sets scored at the checkpoints: " + "; ".join(f"{t}: `{d}`" for t, d in sorted(sets.items())) + "."]
    return rows


def render_submission_card(rec: ModelRecord, g: dict[str, Any], manifest: dict[str, Any]) -> str:
    protocol = g["protocol"]
    fast = manifest["fast"]
    lines = [
        f"# {g['name']}: BabyLM submission ({g['track']})", "",
        f"- **Protocol**: `{protocol}` — pipeline: {PIPELINES.get(protocol, 'unknown')}.",
        f"- **Track**: {g['track']} (word budget {g['word_budget']:,}); the model saw {g['words_seen']:,.0f} words.",
        f"- **Model**: `main/` (the final model; upload as the main branch), {len(g['checkpoints'])} checkpoints "
        "`chck_<N>M/` (upload each as the branch of that name).",
        f"- **Backend**: {manifest['backend']}. Results in the official layout under `results/{g['name']}/`, collated "
        f"in `results/{g['name']}/all_full_preds_and_fast_scores_causal.json`.", "",
        "Every number below is read from the run's result files; nothing was measured at export.", "",
        "## Final model", "", *_final_rows(g), "",
        "## Checkpoints (fast suite)", "", *_checkpoint_rows(g, fast), "",
        "## Not included", "",
        "Official tasks with no babyllama results in this submission: " + ", ".join(manifest["not_scored"]) + ".", "",
    ]
    if protocol == "babyllama":
        lines += ["These scores follow babyllama's own protocol, not an official pipeline's: do not compare them "
                  "with the leaderboard; evaluate with `eval.protocol: babylm-2025` or `babylm-2026` for that.", ""]
    checked = [t for t in ZERO_SHOT if t in g["zero_shot"]]
    lines += [f"Zero-shot tasks scored on the final model: {', '.join(checked) or 'none'}. "
              f"Exported by babyllama {babyllama.__version__} (`babyllama export --format babylm-submission`); "
              "checked with `babyllama check-submission`.", ""]
    return "\n".join(lines)
