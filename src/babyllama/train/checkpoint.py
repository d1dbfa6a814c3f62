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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_model

from babyllama.errors import UserError
from babyllama.hf_logging import quiet_transformers
from babyllama.identity import WEIGHTS_FILE, describe_changes
from babyllama.io import (  # noqa: F401
    CHECKPOINT_RECORD,
    atomic_path,
    cached_file_sha256,
    damaged_file,
    file_sha256,
    read_json,
    remove_stale_temporaries,
    stable_hash,
)

if TYPE_CHECKING:  # a type only: transformers' model code loads where a model is built
    from transformers import PreTrainedModel

STATE_FILE = "training_state.pt"
MANIFEST_FILE = CHECKPOINT_RECORD  # checkpoint.json: every file's sha256 (babyllama.io)
METRICS_FILE = "metrics.jsonl"


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
    path: Path, model: PreTrainedModel, tokenizer_dir: Path, state: TrainingState | None = None, info: dict | None = None
) -> None:
    """Write an HF model folder (+ tokenizer, + training state) at ``path`` atomically, with checksums."""
    with quiet_transformers(), atomic_path(path) as tmp:  # no "Writing model shards" bar at every save
        tmp.mkdir()
        model.save_pretrained(tmp)
        copy_tokenizer(tokenizer_dir, tmp)
        if state is not None:
            torch.save(state.as_dict(), tmp / STATE_FILE)
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


def verify(path: Path, hint: str | None = None) -> dict:
    """Check every file against checkpoint.json; return the manifest. UserError if anything is off, ending
    with ``hint`` (what to do; default: delete the checkpoint)."""
    manifest_path = path / MANIFEST_FILE
    hint = hint or f"delete {path} to start over (or restore it from a backup)"
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


def load_state(path: Path) -> dict:
    """The verified training state of a checkpoint folder, as saved (see TrainingState)."""
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


@dataclass
class TrainingState:
    """Everything a resumed run needs besides the weights: where it is, the optimiser, schedule and
    scaler states, every rank's RNG states, the best dev loss so far, and the identity it was trained
    under (checked before resuming). Saved as plain values in training_state.pt (:meth:`as_dict`),
    read back with :meth:`read`."""

    step: int = 0
    optimizer: dict = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)
    scaler: dict = field(default_factory=dict)
    rng: list = field(default_factory=list)  # one capture_rng() per rank, in rank order
    best_dev_loss: float | None = None
    best_step: int | None = None
    wall_time_s: float = 0.0
    config_hash: str = ""
    components: dict = field(default_factory=dict)
    data_hash: str = ""
    world_size: int = 1
    stream_hash: str = ""  # the hash chain of the batches trained on so far (hex; see loop.train_step)

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def read(cls, path: Path) -> TrainingState:
        """The verified state of checkpoint folder ``path``; keys it does not know are refused."""
        saved = load_state(path)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(saved) - known)
        if unknown:
            raise UserError(f"checkpoint {path}: unknown training state keys {unknown}; delete it to start over")
        return cls(**saved)

    def check_resumable(self, components: dict, config_hash: str, data_hash: str, world_size: int, where: Path) -> None:
        """UserError naming what changed when this state cannot continue under the current run."""
        if self.data_hash != data_hash:
            raise UserError(
                f"cannot resume {where}: the prepared data changed (data_hash {str(self.data_hash)[:12]} -> "
                f"{data_hash[:12]}); delete {where.parent} to start over"
            )
        if self.config_hash != config_hash:
            changes = describe_changes(self.components, components)
            raise UserError(f"cannot resume {where}: the config changed ({changes}); revert it or delete {where.parent} to start over")
        if self.world_size != world_size:
            raise UserError(
                f"cannot resume {where}: it was trained with {self.world_size} processes, now {world_size} "
                f"(the global batch would change); use the same torchrun --nproc_per_node or delete {where.parent}"
            )


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Load model.safetensors of a (verified) checkpoint into ``model`` in place (tied weights handled)."""
    missing, unexpected = load_model(model, path / WEIGHTS_FILE, strict=False, device=str(next(model.parameters()).device))
    if missing or unexpected:
        raise UserError(
            f"checkpoint {path}: weights do not fit the configured model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); delete it to start over"
        )
