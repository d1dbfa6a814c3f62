"""Checkpoints: Hugging Face model folders plus the exact training state, saved atomically and verified.

Layout under ``<out_dir>``::

    checkpoints/<name>/last/   HF model + tokenizer + training_state.pt + checkpoint.json (resume from here)
    checkpoints/<name>/best/   HF model + tokenizer + checkpoint.json (lowest dev loss so far)
    checkpoints/<name>/metrics.jsonl
    models/<name>/             final HF model (the best checkpoint) + metrics.jsonl + training_summary.json

Every folder is written under a temporary name and renamed into place (babyllama.io.atomic_path), so
a kill during a save leaves the previous complete checkpoint. checkpoint.json records the sha256 of
every file; a checkpoint whose files do not match is reported, never loaded. The training state is
plain tensors / lists / numbers, loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model
from transformers import PreTrainedModel

from babyllama.config import Config, ModelConfig
from babyllama.data.tokens import read_manifest
from babyllama.errors import UserError
from babyllama.hf_logging import quiet_transformers
from babyllama.io import (  # noqa: F401
    atomic_path,
    cached_file_sha256,
    file_sha256,
    read_json,
    remove_stale_temporaries,
    stable_hash,
)

STATE_FILE = "training_state.pt"
MANIFEST_FILE = "checkpoint.json"
SUMMARY_FILE = "training_summary.json"
METRICS_FILE = "metrics.jsonl"
WEIGHTS_FILE = "model.safetensors"

#: Train keys that only change how often we log or save, not the weights: editable on resume.
_NON_OPTIMISING_KEYS = {"log_every", "save_every", "fused_loss"}  # fused_loss: same maths, other kernels


# -- what a run is: the resume hash -----------------------------------------------------------------


def run_components(cfg: Config, model_cfg: ModelConfig, fingerprint: dict, windows: str | None = None) -> dict:
    """Everything that determines the trained weights, as a flat {dotted key: value} dict.

    Hashing it gives the config hash; comparing it key by key names what changed. The data itself
    is covered separately by the manifest's data_hash. The world size is checked separately too, so a
    model trained under torchrun is still 'complete' for a single-process pipeline.
    """
    arch = model_cfg.model_dump(mode="json", exclude={"name", "train"})
    train = model_cfg.train.model_dump(mode="json", exclude=_NON_OPTIMISING_KEYS | {"seed"})
    train["windows"] = windows or model_cfg.train.windows
    tree = {"model": arch, "train": train, "seed": model_seed(cfg, model_cfg), "data.seq_len": cfg.data.seq_len, "objective": fingerprint}
    return _flatten(tree)


def model_seed(cfg: Config, model_cfg: ModelConfig) -> int:
    """The seed a model trains with: its own train.seed, else the experiment's (hashed as one value, so
    setting train.seed to the experiment's seed changes nothing)."""
    return cfg.seed if model_cfg.train.seed is None else model_cfg.train.seed


def _flatten(tree: dict, prefix: str = "") -> dict:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def describe_changes(old: dict, new: dict, limit: int = 3) -> str:
    """'train.lr: 0.001 -> 0.002, ...' for the keys that differ (at most ``limit`` shown)."""
    keys = sorted(set(old) | set(new), key=str)
    diffs = [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in keys if old.get(k) != new.get(k)]
    more = f" (+{len(diffs) - limit} more)" if len(diffs) > limit else ""
    return ", ".join(diffs[:limit]) + more


def data_hash(cfg: Config) -> str:
    """The prepared data's content hash (tokenizer + token files) from <data_dir>/manifest.json."""
    manifest = read_manifest(cfg.data_dir)
    if "data_hash" not in manifest:
        raise UserError(f"{cfg.data_dir / 'manifest.json'}: no data_hash; run `babyllama prepare` again")
    return str(manifest["data_hash"])


def is_complete(cfg: Config, model_cfg: ModelConfig, fingerprint: dict, *, windows: str | None = None) -> bool:
    """True when models/<name>/ holds a finished model trained with exactly this config and data."""
    summary_path = cfg.model_dir(model_cfg.name) / SUMMARY_FILE
    if not summary_path.exists() or not (summary_path.parent / WEIGHTS_FILE).exists():
        return False
    try:
        summary = read_json(summary_path)
        current = data_hash(cfg)
    except (UserError, ValueError, OSError):
        return False
    config_hash = stable_hash(run_components(cfg, model_cfg, fingerprint, windows))
    return summary.get("config_hash") == config_hash and summary.get("data_hash") == current


# -- RNG state as weights_only-loadable values ---------------------------------------------------------


def capture_rng() -> dict:
    """Python, numpy, torch and CUDA generator states as tensors / lists / numbers."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    return {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": "MT19937",
            "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]},
            "has_gauss": npy["has_gauss"],
            "gauss": npy["gauss"],
        }
    )
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- writing -----------------------------------------------------------------------------------------


def save_checkpoint(
    path: Path, model: PreTrainedModel, tokenizer_dir: Path, state: dict | None = None, info: dict | None = None
) -> None:
    """Write an HF model folder (+ tokenizer, + training state) at ``path`` atomically, with checksums."""
    with quiet_transformers(), atomic_path(path) as tmp:  # no "Writing model shards" bar at every save
        tmp.mkdir()
        model.save_pretrained(tmp)
        copy_tokenizer(tokenizer_dir, tmp)
        if state is not None:
            torch.save(state, tmp / STATE_FILE)
        _write_manifest(tmp, info or {})


def copy_tokenizer(tokenizer_dir: Path, dest: Path) -> None:
    for f in sorted(Path(tokenizer_dir).iterdir()):
        if f.is_file():
            shutil.copy2(f, dest / f.name)


def _write_manifest(folder: Path, info: dict) -> None:
    files = {f.name: file_sha256(f) for f in sorted(folder.iterdir()) if f.is_file() and f.name != MANIFEST_FILE}
    (folder / MANIFEST_FILE).write_text(json.dumps({**info, "files": files}, indent=2, sort_keys=True) + "\n")


def copy_checkpoint(src: Path, dest: Path, *, drop: tuple[str, ...] = (STATE_FILE,), extra: dict[str, bytes] | None = None) -> None:
    """Copy a verified checkpoint's files (minus ``drop``, plus ``extra`` files) to ``dest`` atomically."""
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        for f in sorted(src.iterdir()):
            if f.is_file() and f.name not in drop and f.name != MANIFEST_FILE:
                shutil.copy2(f, tmp / f.name)
        for name, data in (extra or {}).items():
            (tmp / name).write_bytes(data)
        info = {k: v for k, v in read_json(src / MANIFEST_FILE).items() if k != "files"}
        _write_manifest(tmp, info)


# -- reading -----------------------------------------------------------------------------------------


def find(path: Path, *, restore: bool = False) -> Path | None:
    """``path`` if it exists, else the previous copy that atomic_path parks as ``.<name>.old`` while it
    swaps folders (present only if a kill landed between its two renames), else None. With ``restore``
    the parked copy is renamed back to ``path`` first."""
    if path.is_dir():
        return path
    parked = path.with_name(f".{path.name}.old")
    if not parked.is_dir():
        return None
    if restore:
        os.replace(parked, path)
        return path
    return parked


def verify(path: Path) -> dict:
    """Check every file against checkpoint.json; return the manifest. UserError if anything is off."""
    manifest_path = path / MANIFEST_FILE
    hint = f"delete {path} to start over (or restore it from a backup)"
    try:
        manifest = read_json(manifest_path)
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"checkpoint {path} is incomplete or corrupted ({MANIFEST_FILE} unreadable); {hint}") from None
    for name, digest in files.items():
        f = path / name
        if not f.is_file():
            raise UserError(f"checkpoint {path} is incomplete: {name} is missing; {hint}")
        if file_sha256(f) != digest:
            raise UserError(f"checkpoint {path} is corrupted: {name} does not match its sha256; {hint}")
    return manifest


def damaged_file(folder: Path) -> str | None:
    """The first file of a finished model or checkpoint folder that does not match its checkpoint.json
    record (missing, or another sha256), "checkpoint.json" when that record is unreadable, else None.
    Each file is read once per version (path, size, mtime) in a process, so asking again is free."""
    try:
        files = read_json(folder / MANIFEST_FILE)["files"]
        items = sorted(files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return MANIFEST_FILE
    for name, digest in items:
        f = folder / name
        if not f.is_file() or cached_file_sha256(f) != digest:
            return name
    return None


def load_state(path: Path) -> dict:
    """The verified training state of a checkpoint folder."""
    manifest = verify(path)
    if STATE_FILE not in manifest["files"]:
        raise UserError(f"checkpoint {path} holds no training state ({STATE_FILE}); delete it to start over")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a file it then refuses
            warnings.simplefilter("ignore")
            return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's message would suggest turning weights_only off: never do that
        raise UserError(f"checkpoint {path}: {STATE_FILE} holds objects other than tensors and numbers, refused "
                        f"(only weights-only states are loaded); delete {path} to start over") from None


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load model.safetensors of a (verified) checkpoint into ``model`` in place (tied weights handled)."""
    missing, unexpected = load_model(model, path / WEIGHTS_FILE, strict=False, device=str(next(model.parameters()).device))
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path}: weights do not fit the configured model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); delete it to start over"
        )
