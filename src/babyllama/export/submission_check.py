"""`babyllama check-submission DIR`: a BabyLM submission folder against the organisers' documented layout.

What is checked is what the official ``collate_preds.py`` reads and the README's submission rules ask for
(see export/submission.py): the final model, every checkpoint of the track's schedule up to the words the
model saw (``chck_<N>M``), each model folder loadable (config + safetensors weights + tokenizer), every
predictions file in the runner's format (``{subtask: {"predictions": [{"id": "<subtask>_<i>", "pred"}]}}``,
fine-tuning ``pred`` an integer), each checkpoint's fast results with the same subtasks and sizes as the
others, the collated file's benchmarks and one fast score per checkpoint, and a card naming the protocol.
The first problem found is one line naming the file and the field (UserError; the command exits 2).
Official tasks babyllama does not score are listed in ``submission.json`` (``not_scored``), not errors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from babyllama.errors import UserError
from babyllama.export.babylm_layout import BACKEND, MANIFEST, ZERO_SHOT
from babyllama.io import read_json

MANIFEST_KEYS = ("model", "backend", "protocol", "track", "words_seen", "revisions", "required", "zero_shot",
                 "finetune", "fast")
REVISION = re.compile(r"^chck_[1-9][0-9]*M$")


def _json(path: Path, root: Path) -> Any:
    rel = path.relative_to(root)
    if not path.is_file():
        raise UserError(f"{rel}: missing")
    try:
        return read_json(path)
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{rel}: not valid JSON ({str(e).splitlines()[0]})") from None


def _check_model(folder: Path, root: Path) -> None:
    rel = folder.relative_to(root)
    if not folder.is_dir():
        raise UserError(f"{rel}/: missing (a model folder)")
    for need in ("config.json", "tokenizer_config.json"):
        if not (folder / need).is_file():
            raise UserError(f"{rel}/{need}: missing (a Hugging Face model folder needs it)")
    if not ((folder / "model.safetensors").is_file() or (folder / "model.safetensors.index.json").is_file()):
        raise UserError(f"{rel}/model.safetensors: missing (the weights)")


def check_predictions(path: Path, root: Path, *, integer: bool = False) -> dict[str, int]:
    """{subtask: number of predictions} of one predictions.json in the official runner's format."""
    data, rel = _json(path, root), path.relative_to(root)
    if not isinstance(data, dict) or not data:
        raise UserError(f"{rel}: expected an object of subtasks, each with 'predictions'")
    sizes = {}
    for key, block in data.items():
        preds = block.get("predictions") if isinstance(block, dict) else None
        if not isinstance(preds, list) or not preds:
            raise UserError(f"{rel}: {key}: missing field 'predictions' (a non-empty list)")
        for i, p in enumerate(preds):
            for field in ("id", "pred"):
                if not isinstance(p, dict) or field not in p:
                    raise UserError(f"{rel}: {key}: predictions[{i}]: missing field {field!r}")
            if p["id"] != f"{key}_{i}":
                raise UserError(f"{rel}: {key}: predictions[{i}]: id {p['id']!r}, expected {key}_{i!r}")
            if integer and (not isinstance(p["pred"], int) or isinstance(p["pred"], bool)):
                raise UserError(f"{rel}: {key}: predictions[{i}]: pred {p['pred']!r} is not a class id")
        sizes[key] = len(preds)
    return sizes


def _manifest(root: Path) -> dict[str, Any]:
    m = _json(root / MANIFEST, root)
    if not isinstance(m, dict):
        raise UserError(f"{MANIFEST}: expected an object")
    for key in MANIFEST_KEYS:
        if key not in m:
            raise UserError(f"{MANIFEST}: missing field {key!r}")
    if m["backend"] != BACKEND:
        raise UserError(f"{MANIFEST}: backend {m['backend']!r}, expected {BACKEND!r}")
    for rev in [*m["revisions"], *m["required"]]:
        if not isinstance(rev, str) or not REVISION.match(rev):
            raise UserError(f"{MANIFEST}: revision {rev!r} is not named chck_<N>M as the official scripts expect")
    return m


def _check_revisions(root: Path, res: Path, m: dict[str, Any]) -> None:
    missing = [r for r in m["required"] if r not in m["revisions"] or not (root / r).is_dir()]
    if missing:
        raise UserError(f"{missing[0]}/: missing; the {m['track']} schedule asks for every checkpoint up to "
                        f"{m['words_seen']:,.0f} words seen ({len(missing)} missing)")
    reference: dict[str, dict[str, int]] = {}
    for rev in m["revisions"]:
        _check_model(root / rev, root)
        for task in m["fast"]:
            sizes = check_predictions(res / rev / "zero_shot" / BACKEND / ZERO_SHOT[task][2] / "predictions.json", root)
            if reference.setdefault(task, sizes) != sizes:
                raise UserError(f"{(res / rev).relative_to(root)}: {task} fast predictions cover other subtasks or sizes "
                                f"than {m['revisions'][0]}'s")


def _check_collated(res: Path, root: Path, m: dict[str, Any]) -> None:
    collated = _json(res / f"all_full_preds_and_fast_scores_{BACKEND}.json", root)
    rel = (res / f"all_full_preds_and_fast_scores_{BACKEND}.json").relative_to(root)
    for task in m["zero_shot"]:
        if ZERO_SHOT[task][0] not in collated:
            raise UserError(f"{rel}: missing field {ZERO_SHOT[task][0]!r}")
    for task in m["finetune"]:
        if task not in (collated.get("glue") or {}):
            raise UserError(f"{rel}: glue: missing field {task!r}")
    for task in m["fast"]:
        scores = (collated.get("fast_eval_results") or {}).get(ZERO_SHOT[task][0])
        if not isinstance(scores, list) or len(scores) != len(m["revisions"]):
            raise UserError(f"{rel}: fast_eval_results: {ZERO_SHOT[task][0]}: expected one score set per checkpoint "
                            f"({len(m['revisions'])})")


def check_submission(folder: str | Path) -> dict[str, Any]:
    """Check a submission folder; return its manifest, or raise UserError naming the first problem."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    m = _manifest(root)
    _check_model(root / "main", root)
    res = root / "results" / m["model"]
    for task in m["zero_shot"]:
        if task not in ZERO_SHOT:
            raise UserError(f"{MANIFEST}: zero_shot: unknown task {task!r}")
        check_predictions(res / "main" / "zero_shot" / BACKEND / ZERO_SHOT[task][1] / "predictions.json", root)
    for task in m["finetune"]:
        check_predictions(res / "main" / "finetune" / task / "predictions.json", root, integer=True)
        text = (res / "main" / "finetune" / task / "results.txt")
        if not text.is_file() or not re.search(r"^accuracy: [0-9.eE+-]+$", text.read_text(encoding="utf-8"), re.M):
            raise UserError(f"{text.relative_to(root)}: missing or without an 'accuracy: <value>' line")
    _check_revisions(root, res, m)
    _check_collated(res, root, m)
    card = root / "README.md"
    if not card.is_file() or m["protocol"] not in card.read_text(encoding="utf-8"):
        raise UserError(f"README.md: missing, or it does not state the protocol {m['protocol']!r}")
    return m
