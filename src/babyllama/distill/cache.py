"""The teacher-logit cache: one pass of the ensemble over the fixed training windows, stored top-k.

What is stored, per position of every fixed ``seq_len`` window (window i = tokens[i*L : (i+1)*L]):

* ``ids``    (k,)  the k most likely tokens of the tempered ensemble, most likely first (uint16, or
  int32 for vocabularies over 65,535);
* ``values`` (k,)  the ensemble's tempered log-probabilities of those tokens (float16);
* ``tail``   ()    the log of the remaining probability mass, log(1 - sum of the top-k probs), computed
  in float32 from the full distribution (absent when k covers the whole vocabulary).

For ``logit_mean`` the ensemble is softmax(mean logits / T); for ``prob_mean`` it is the mixture of the
teachers' softmax(z / T). Either way the cache holds the same kind of numbers: the top-k of the tempered
ensemble's log-probabilities, with the tail mass.

The approximation (what KD from the cache computes): both distributions are collapsed onto k + 1
buckets, the k cached tokens and one tail bucket. The teacher's buckets are the cached values and tail
mass (renormalised, which only absorbs float16 rounding); the student's are its tempered probabilities
of the same k tokens plus its own tail mass 1 - sum of those probabilities (computed as a log-sum-exp
over the other tokens, not by subtraction). The divergence (forward KL, reverse KL or JS) is then taken
between the two (k + 1)-bucket distributions. Consequences:

* every one of these divergences is an f-divergence, so collapsing can only lower it: the cached KD
  is a lower bound of the exact KD, equal to it when k is the vocabulary size (up to float16 rounding
  of the values, about 4e-3 relative in a probability);
* the gradient on the cached tokens is exact in form; inside the tail bucket the student is pushed
  only to match the total tail mass, spread in proportion to its own probabilities, so the shape of
  the teacher's tail ("dark knowledge" beyond the top k) is not taught;
* the top-1 agreement metric uses the cached top-1, which is the ensemble's exact argmax.

Layout under ``<out_dir>/cache/<key>/``: ``spec.json`` (what the numbers depend on), per shard
``shard-NNNNN.{ids,values,tail}.npy`` (memory-mapped when read) and ``shard-NNNNN.json`` (window range,
byte length and sha256 of each file), and ``manifest.json`` (written last, once every shard is done).
The key is a hash of the spec: sha256 of every teacher's weights, the data hash (tokenizer and tokens),
the window layout, the ensemble rule and weights, the temperature and k, so any change lands in a new
folder. A shard whose files do not match their record is reported and rebuilt; completed shards of an
interrupted build are kept and the build continues where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from babyllama.data.windows import gather_windows, window_starts
from babyllama.distill.loss import CHUNK_ELEMENTS, DenseTeachers
from babyllama.errors import UserError
from babyllama.io import (
    atomic_path,
    atomic_write_json,
    cached_file_sha256,
    file_sha256,
    read_json,
    stable_hash,
)
from babyllama.train.distributed import barrier, rank, world_size

CACHE_VERSION = 1
SPEC_FILE = "spec.json"
MANIFEST_FILE = "manifest.json"
#: Target bytes per shard (all of its files together).
SHARD_BYTES = 64 << 20

#: Runs the teachers on (b, L) input ids and returns their logits, each (b, L, V).
TeacherFn = Callable[[Tensor], Sequence[Tensor]]


def weights_hash(model_dir: Path) -> str:
    """sha256 of a saved model's weights: model.safetensors, or the combined hash of its shards."""
    model_dir = Path(model_dir)
    single = model_dir / "model.safetensors"
    if single.is_file():
        return cached_file_sha256(single)
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        raise UserError(f"{model_dir}: no *.safetensors weights found")
    return hashlib.sha256("".join(cached_file_sha256(p) for p in shards).encode()).hexdigest()


@dataclass(frozen=True)
class CacheSpec:
    """Everything the cached numbers depend on; its hash names the cache folder."""

    teachers: tuple[tuple[str, str], ...]  # (name, weights sha256), in ensemble order
    data_hash: str
    seq_len: int
    n_windows: int
    vocab_size: int
    ensemble: str
    weights: tuple[float, ...]  # normalised
    temperature: float
    top_k: int
    shard_windows: int = 0  # 0: chosen from SHARD_BYTES
    layout: str = "fixed"
    version: int = CACHE_VERSION

    def __post_init__(self) -> None:
        if self.shard_windows <= 0:
            per_window = self.seq_len * (self.k * (self.ids_dtype.itemsize + 2) + (4 if self.has_tail else 0))
            object.__setattr__(self, "shard_windows", max(1, SHARD_BYTES // per_window))

    @property
    def k(self) -> int:
        return min(self.top_k, self.vocab_size)

    @property
    def has_tail(self) -> bool:
        return self.k < self.vocab_size

    @property
    def ids_dtype(self) -> np.dtype:
        return np.dtype(np.uint16) if self.vocab_size <= 65536 else np.dtype(np.int32)

    @property
    def n_shards(self) -> int:
        return -(-self.n_windows // self.shard_windows)

    def as_dict(self) -> dict:
        return json.loads(json.dumps(asdict(self)))  # tuples -> lists, as they read back from JSON

    def key(self) -> str:
        return stable_hash(self.as_dict())[:20]

    def shard_range(self, i: int) -> tuple[int, int]:
        return i * self.shard_windows, min((i + 1) * self.shard_windows, self.n_windows)

    def parts(self) -> tuple[str, ...]:
        return ("ids", "values", "tail") if self.has_tail else ("ids", "values")


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def _check_shard(root: Path, spec: CacheSpec, i: int, *, verify_hash: bool) -> str | None:
    """None if shard i is complete and intact, else what is wrong with it."""
    record_path = root / f"{_shard_name(i)}.json"
    if not record_path.is_file():
        return "missing"
    try:
        record = read_json(record_path)
        files = record["files"]
        if list(record["windows"]) != list(spec.shard_range(i)) or sorted(files) != sorted(spec.parts()):
            return "record does not match the cache layout"
    except (ValueError, KeyError, TypeError):
        return "unreadable record"
    for part in spec.parts():
        path = root / f"{_shard_name(i)}.{part}.npy"
        if not path.is_file():
            return f"{path.name} missing"
        size = path.stat().st_size
        if size != files[part]["bytes"]:
            return f"{path.name} has {size} bytes, expected {files[part]['bytes']} (truncated?)"
        if verify_hash and file_sha256(path) != files[part]["sha256"]:
            return f"{path.name} sha256 mismatch"
    return None


def _remove_shard(root: Path, i: int) -> None:
    (root / f"{_shard_name(i)}.json").unlink(missing_ok=True)
    for path in root.glob(f"{_shard_name(i)}.*.npy"):
        path.unlink(missing_ok=True)


def _save_npy(path: Path, array: np.ndarray) -> dict:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
    return {"bytes": path.stat().st_size, "sha256": file_sha256(path)}


@torch.no_grad()
def _build_shard(root: Path, spec: CacheSpec, i: int, tokens: np.ndarray, teacher_fn: TeacherFn,
                 device: torch.device, batch_size: int, bar: tqdm) -> None:
    first, last = spec.shard_range(i)
    n, length, k = last - first, spec.seq_len, spec.k
    ids = np.empty((n * length, k), dtype=spec.ids_dtype)
    values = np.empty((n * length, k), dtype=np.float16)
    tail = np.empty((n * length,), dtype=np.float32) if spec.has_tail else None
    chunk_rows = max(1, CHUNK_ELEMENTS // spec.vocab_size)
    for start in range(first, last, batch_size):
        stop = min(start + batch_size, last)
        x = gather_windows(tokens, window_starts(np.arange(start, stop), length), length)
        logits = teacher_fn(torch.from_numpy(x).to(device))
        for z in logits:
            if z.shape[-1] != spec.vocab_size:
                raise UserError(f"a teacher returned {z.shape[-1]} logits per token, expected vocab size {spec.vocab_size}")
        src = DenseTeachers([z.reshape(-1, spec.vocab_size) for z in logits], spec.temperature, spec.ensemble,
                            spec.weights)
        offset = (start - first) * length
        bar.update(stop - start)
        for r in range(0, (stop - start) * length, chunk_rows):
            rows = slice(r, min(r + chunk_rows, (stop - start) * length))
            _, lp = src.chunk(rows)
            top = lp.topk(k, dim=-1, sorted=True)
            out = slice(offset + rows.start, offset + rows.stop)
            ids[out] = top.indices.cpu().numpy().astype(spec.ids_dtype)
            values[out] = top.values.clamp(min=-6e4).cpu().numpy().astype(np.float16)
            if tail is not None:
                tail[out] = lp.scatter(-1, top.indices, -torch.inf).logsumexp(-1).float().cpu().numpy()
    arrays = {"ids": ids.reshape(n, length, k), "values": values.reshape(n, length, k)}
    if tail is not None:
        arrays["tail"] = tail.reshape(n, length)
    files = {part: _save_npy(root / f"{_shard_name(i)}.{part}.npy", a) for part, a in arrays.items()}
    # How much of the tempered ensemble the top-k holds: the rest is taught only as one tail bucket.
    topk_mass = 1.0 if tail is None else float(1.0 - np.exp(tail.astype(np.float64)).mean())
    atomic_write_json(root / f"{_shard_name(i)}.json", {"windows": [first, last], "files": files, "topk_mass": topk_mass})


def _report_coverage(name: str, spec: CacheSpec, shards: list[dict], log: Callable[[str], None]) -> None:
    """Say how faithful the cache is: the mean share of the tempered ensemble's mass in the top-k."""
    sizes = [s["windows"][1] - s["windows"][0] for s in shards]
    masses = [s.get("topk_mass") for s in shards]
    if not sizes or any(m is None for m in masses):
        return
    mass = sum(m * n for m, n in zip(masses, sizes, strict=True)) / sum(sizes)
    msg = f"teacher cache {name}: the top-{spec.k} hold {100 * mass:.1f}% of the tempered ensemble's probability mass"
    if mass < 0.5:
        msg += (" — most of the KD signal is the single tail bucket; raise distill.cache.top_k or lower "
                "distill.temperature, or distil from live teachers")
    log(msg)


class TeacherCache:
    """Read side of a complete cache: rows of cached ensemble distributions by fixed-window index."""

    def __init__(self, root: Path, spec: CacheSpec) -> None:
        self.root, self.spec = Path(root), spec
        self._shards = [
            {part: np.load(root / f"{_shard_name(i)}.{part}.npy", mmap_mode="r") for part in spec.parts()}
            for i in range(spec.n_shards)
        ]

    @property
    def key(self) -> str:
        return self.spec.key()

    def rows(self, window_ids: Tensor | np.ndarray) -> tuple[Tensor, Tensor, Tensor | None]:
        """(ids int64 (B, L, k), values float16 (B, L, k), tail float32 (B, L) or None) for the windows."""
        wids = np.asarray(window_ids.cpu() if isinstance(window_ids, Tensor) else window_ids, dtype=np.int64)
        if wids.size and (wids.min() < 0 or wids.max() >= self.spec.n_windows):
            raise ValueError(f"window ids must lie in [0, {self.spec.n_windows}) for the cache (fixed windows), got "
                             f"{wids.min()}..{wids.max()}")
        sw = self.spec.shard_windows
        picked = {part: np.stack([self._shards[w // sw][part][w % sw] for w in wids]) for part in self.spec.parts()}
        ids = torch.from_numpy(picked["ids"].astype(np.int64))
        values = torch.from_numpy(picked["values"])
        tail = torch.from_numpy(picked["tail"]) if "tail" in picked else None
        return ids, values, tail


def _wait_for(predicate: Callable[[], bool], what: str, poll_s: float = 2.0, timeout_s: float = 12 * 3600) -> None:
    """Other ranks build the other shards (torchrun stops every rank if one of them fails)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise UserError(f"teacher cache: gave up waiting for the other ranks' {what} after {timeout_s:.0f}s")
        time.sleep(poll_s)


def ensure_cache(
    cache_root: Path,
    spec: CacheSpec,
    tokens: np.ndarray,
    teacher_fn_factory: Callable[[], TeacherFn],
    *,
    device: torch.device,
    batch_size: int = 32,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> TeacherCache:
    """Open the cache for ``spec`` under ``cache_root/<key>/``, building or repairing what is missing.

    The teachers are loaded (through ``teacher_fn_factory``) only if some shard has to be built. Under
    torchrun each rank builds every world_size-th shard. Every shard of a finished cache is verified
    against its sha256 when opened; a damaged one is reported and rebuilt.
    """
    if len(tokens) < spec.n_windows * spec.seq_len:
        raise UserError(f"cache spec wants {spec.n_windows} windows of {spec.seq_len} tokens, the data has {len(tokens)} tokens")
    root = Path(cache_root) / spec.key()
    root.mkdir(parents=True, exist_ok=True)
    spec_path = root / SPEC_FILE
    if spec_path.is_file():
        try:
            on_disk = read_json(spec_path)
        except ValueError:
            on_disk = None
        if on_disk != spec.as_dict():
            raise UserError(f"{spec_path}: records a different cache than its key {spec.key()}; delete {root} and rerun")
    elif rank() == 0:
        atomic_write_json(spec_path, spec.as_dict())

    manifest_path = root / MANIFEST_FILE
    verify_all = manifest_path.is_file()
    mine = [i for i in range(spec.n_shards) if i % world_size() == rank()]
    todo = []
    for i in mine:
        problem = _check_shard(root, spec, i, verify_hash=True)
        if problem is None:
            continue
        if problem != "missing" or verify_all:
            log(f"teacher cache {root.name}: {_shard_name(i)} {problem}; rebuilding it")
        _remove_shard(root, i)
        todo.append(i)
    if todo:
        if rank() == 0:
            manifest_path.unlink(missing_ok=True)
        done = spec.n_shards - len(todo) if world_size() == 1 else None
        resumed = f"; resuming: {done} of {spec.n_shards} shards already built" if done else ""
        n_todo = sum(spec.shard_range(i)[1] - spec.shard_range(i)[0] for i in todo)
        log(f"teacher cache {root.name}: scoring {n_todo} of {spec.n_windows} windows with the teachers "
            f"(top-{spec.k} of vocab {spec.vocab_size}, {len(todo)} shard(s){resumed})")
        teacher_fn = teacher_fn_factory()
        with tqdm(total=n_todo, desc="teacher cache", unit="window", disable=None if progress else True) as bar:
            for i in todo:
                _build_shard(root, spec, i, tokens, teacher_fn, device, batch_size, bar)
    if world_size() > 1:
        _wait_for(lambda: all(_check_shard(root, spec, i, verify_hash=False) is None for i in range(spec.n_shards)),
                  "cache shards")
    if rank() == 0:
        shards = [read_json(root / f"{_shard_name(i)}.json") for i in range(spec.n_shards)]
        manifest = {"key": spec.key(), "spec": spec.as_dict(), "shards": shards}
        if not manifest_path.is_file() or read_json(manifest_path) != manifest:
            atomic_write_json(manifest_path, manifest)
        if todo:
            _report_coverage(root.name, spec, shards, log)
    if world_size() > 1:
        _wait_for(manifest_path.is_file, "cache manifest")
    barrier()  # under torchrun, no rank reads the cache before rank 0 has finished writing its manifest
    return TeacherCache(root, spec)
