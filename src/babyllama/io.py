"""Small file helpers shared by every stage: atomic writes and stable hashes.

Every file a later stage trusts is written to a temporary name in the same folder and renamed into
place, so an interrupted process never leaves a half-written file under the final name.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from babyllama.errors import looks_like_write_failure, write_failure


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success rename it onto ``path`` (file or folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        try:
            yield target
        except Exception as e:  # a library's report of a refused write becomes the OSError behind it
            if (isinstance(e, OSError) and e.filename is not None) or not looks_like_write_failure(e):
                raise
            raise write_failure(e, path) from e
        if target.is_dir() and path.is_dir():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(target, path)
            shutil.rmtree(old)
        else:
            if target.is_file():
                with open(target, "rb") as f:
                    os.fsync(f.fileno())
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def stable_hash(obj: Any) -> str:
    """SHA-256 of the canonical JSON form of ``obj`` (dict order does not matter)."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=256)
def _sha256_of_version(path: Path, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def cached_file_sha256(path: str | os.PathLike) -> str:
    """file_sha256, read once per file version (path, size, mtime) in a process: stages that check the
    same weights or token files again (`run` asks more than once) pay for one read."""
    st = os.stat(path)
    return _sha256_of_version(Path(path).resolve(), st.st_size, st.st_mtime_ns)


def forget_file_hashes() -> None:
    """Drop the memo of cached_file_sha256, as a new process starts without it (benchmarks, tests)."""
    _sha256_of_version.cache_clear()


#: The record of a model or checkpoint folder: {"files": {name: sha256}} plus what its writer adds.
CHECKPOINT_RECORD = "checkpoint.json"


def damaged_file(folder: Path) -> str | None:
    """The first file of a finished model or checkpoint folder that does not match its checkpoint.json
    record (missing, or another sha256), "checkpoint.json" when that record is unreadable, else None.
    Each file is read once per version (path, size, mtime) in a process, so asking again is free."""
    try:
        files = read_json(Path(folder) / CHECKPOINT_RECORD)["files"]
        items = sorted(files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return CHECKPOINT_RECORD
    for name, digest in items:
        f = Path(folder) / name
        if not f.is_file() or cached_file_sha256(f) != digest:
            return name
    return None


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a file nested too deeply for the parser is a ValueError like any malformed one."""
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except RecursionError:
            raise ValueError(f"{path}: JSON nested too deeply") from None


def remove_stale_temporaries(folder: Path) -> int:
    """Delete the ``.<name>.*.tmp`` folders that atomic_path leaves when a process is killed mid-write,
    anywhere under ``folder``; return how many. Only safe while no other process writes there (the
    out_dir lock, babyllama.lock)."""
    removed = 0
    if not Path(folder).is_dir():
        return 0
    for root, dirs, _ in os.walk(folder):
        for d in list(dirs):
            if d.startswith(".") and d.endswith(".tmp"):
                shutil.rmtree(Path(root) / d, ignore_errors=True)
                dirs.remove(d)
                removed += 1
    return removed
