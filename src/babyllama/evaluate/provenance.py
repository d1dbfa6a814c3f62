"""What a result was computed from, as sha256 sums: the model's files and the data it scored.

An evaluation result stores these sums under ``_inputs`` (with the settings it was computed with); the
registry's reader (registry.read_result) recomputes them from the files on disk and trusts the result only
when they match. A result is therefore shown only while the very files it was computed from are still
there: a retrained or damaged model, an edited data set or a changed setting makes it stale, and `run`
computes it again. Sums are read once per file version in a process (io.cached_file_sha256).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from babyllama.io import cached_file_sha256

#: Files of a model folder that are not the model: the training log and the resumable optimiser state.
NOT_MODEL_FILES = {"metrics.jsonl", "training_state.pt", "sweep.log"}


def folder_sums(folder: Path, skip: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    """{relative path: sha256} of every regular file under ``folder`` (hidden names and ``skip`` left out)."""
    out = {}
    for f in sorted(Path(folder).rglob("*")):
        rel = f.relative_to(folder)
        if f.is_file() and not any(p.startswith(".") for p in rel.parts) and f.name not in skip:
            out[rel.as_posix()] = cached_file_sha256(f)
    return out


def model_sums(model_dir: Path) -> dict[str, str]:
    """The sums of a model folder's files (weights, config, tokenizer; not its training log)."""
    return folder_sums(model_dir, NOT_MODEL_FILES)


def data_sums(paths: list[Path]) -> dict[str, str]:
    """The sums of the data files a result scored: each path a file or a folder, keyed by position."""
    out = {}
    for i, p in enumerate(paths):
        p = Path(p)
        if p.is_file():
            out[f"{i}:{p.name}"] = cached_file_sha256(p)
        elif p.is_dir():
            out.update({f"{i}:{k}": v for k, v in folder_sums(p).items()})
        else:
            out[f"{i}:{p.name}"] = "missing"
    return out


def inputs_record(models: list[Path], data: list[Path], settings: dict[str, Any]) -> dict[str, Any]:
    """What ``_inputs`` of a result holds: the sums of its models' files and of its data, and its settings."""
    plain = json.loads(json.dumps(settings, sort_keys=True, default=str))  # as it reads back from the file
    return {"models": [model_sums(m) for m in models], "data": data_sums(data), "settings": plain}


def difference(saved: Any, now: dict[str, Any]) -> str | None:
    """Why a result's recorded inputs differ from the inputs on disk now (None when they are the same)."""
    if not isinstance(saved, dict):
        return "it records no sums of the files it was computed from"
    if saved.get("models") != now["models"]:
        return "the model's files changed since it was computed"
    if saved.get("data") != now["data"]:
        return "the data it scored changed since it was computed"
    if saved.get("settings") != now["settings"]:
        return "the evaluation settings changed since it was computed"
    return None
