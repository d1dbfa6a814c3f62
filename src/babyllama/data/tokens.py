"""Token files and the manifest that vouches for them.

``train.bin`` / ``dev.bin`` are flat arrays of token ids (uint16, or uint32 when the vocabulary does not
fit), read back as read-only memory maps. ``manifest.json`` is written last: a token file counts as
prepared only if the manifest exists and records exactly its length, so a prepare that was interrupted
(the manifest is removed before any token file is replaced) is never mistaken for a finished one.
Every read also checks the file's sha256 against the manifest (once per file version in a process), so
a token file changed in place, even at the same size, is reported instead of trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from babyllama.errors import UserError
from babyllama.io import atomic_path, cached_file_sha256, read_json

MANIFEST = "manifest.json"
SPLIT_FILES = {"train": "train.bin", "dev": "dev.bin"}


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 65535 else np.dtype(np.uint32)


def _not_prepared(where: Path, why: str) -> UserError:
    return UserError(f"{where}: {why}: not prepared — run `babyllama prepare CONFIG` first")


def read_manifest(data_dir: Path) -> dict:
    """The manifest of a prepared data folder (<out_dir>/data)."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise _not_prepared(Path(data_dir), "no manifest.json")
    try:
        manifest = read_json(path)
    except (OSError, ValueError):
        raise _not_prepared(path, "unreadable manifest") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise _not_prepared(path, f"incomplete manifest ({problem})")
    return manifest


#: The fields later stages read from the manifest, with their types ("data" fields: token files, ids).
REQUIRED = {"dtype": str, "vocab_size": int, "special_tokens": dict, "tokenizer": str, "data_hash": str,
            "splits": dict}


def _manifest_problem(manifest: object) -> str | None:
    """What is missing or malformed in a manifest (None when every field a stage reads is there): one
    check here, so a damaged manifest is 'not prepared' (and `prepare` rebuilds it), never a KeyError."""
    if not isinstance(manifest, dict):
        return "not a JSON object"
    for key, kind in REQUIRED.items():
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            return f"no {key} ({kind.__name__})"
    try:
        np.dtype(manifest["dtype"])
    except TypeError:
        return f"dtype {manifest['dtype']!r} is not a numpy type"
    for split in SPLIT_FILES:
        info = manifest["splits"].get(split)
        if not isinstance(info, dict) or not isinstance(info.get("file"), str) or not isinstance(info.get("tokens"), int):
            return f"split {split!r} lacks its file or token count"
        if Path(info["file"]).name != info["file"]:
            return f"split {split!r} names {info['file']!r}, not a file of the data folder"
    return None


def load_tokens(data_dir: Path, split: Literal["train", "dev"]) -> np.ndarray:
    """The split's token ids as a read-only memory map, checked against the manifest."""
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'dev', got {split!r}")
    data_dir = Path(data_dir)
    manifest = read_manifest(data_dir)
    info = manifest["splits"].get(split)
    if not info:
        raise _not_prepared(data_dir, f"manifest has no {split} split")
    path = data_dir / info["file"]
    dtype = np.dtype(manifest["dtype"])
    expected = int(info["tokens"]) * dtype.itemsize
    if not path.is_file():
        raise _not_prepared(path, "missing")
    size = path.stat().st_size
    if size != expected or expected == 0:
        raise _not_prepared(path, f"{size} bytes where the manifest expects {expected}")
    digest = (manifest.get("token_sha256") or {}).get(split)
    if digest is not None and cached_file_sha256(path) != digest:
        raise _not_prepared(path, "its sha256 does not match the manifest (changed since it was prepared)")
    return np.memmap(path, dtype=dtype, mode="r")


def write_tokens(path: Path, tokens: np.ndarray) -> None:
    """Write a token array atomically."""
    with atomic_path(path) as tmp:
        tokens.tofile(tmp)
