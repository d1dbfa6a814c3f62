"""The teacher-logit cache: one pass of the ensemble over the fixed training windows, stored compactly.

Three formats (``distill.cache.mode``; each a class of :mod:`babyllama.distill.formats`, which owns
what differs between them) store, per position of every fixed ``seq_len`` window (window i =
tokens[i*L : (i+1)*L]), a sparse picture of the tempered ensemble p (``span``, for
``vocab_alignment: span``, instead stores each teacher's aligned buckets as span.py's loss reads them,
every teacher run on its own tokenization of the window; formats.SpanFormat):

``sample`` (the default; the random-sampling KD of Anshumann et al., "Sparse Logit Sampling", ACL 2025)

* ``ids``     (S,) the distinct tokens among S draws from p, most drawn first (uint16, or int32 for
  vocabularies over 65,535); unused slots have count 0;
* ``counts``  (S,) how often each was drawn (uint8 for S <= 255, else uint16);
* ``entropy`` ()   the entropy of p (float32), so the logged KD value is unbiased too.

  The S draws are *systematic*: one uniform u per position, draws at the quantiles (i + u) / S of p's
  CDF over the vocabulary. Every token's expected count is exactly S * p_j (so p_hat = counts / S is
  an unbiased estimate of p, and the forward-KL gradient (q - p_hat) / T is unbiased), and its count is
  always floor or ceil of S * p_j: any token with p_j >= 1/S is always present, with nearly its
  exact mass; only the tail is sampled. The uniforms come from numpy's generator seeded with the
  draw seed (the student's seed unless distill.cache.seed), the set and the shard's first window, so
  a fixed seed gives the same cache however it is built (resumed, sharded over ranks), and each
  member of a sweep has its own draws. ``sets`` independent sets of draws are stored from one pass
  of the teachers (ids and counts are (sets, windows, L, S)); epoch e reads set e mod sets, so the
  draws' noise averages over epochs instead of repeating. Forward KL only: reverse KL and JS depend
  on log p, which no sample estimates without bias, so they are refused for this mode.

  Noise: each shard records the draws' exact mean squared error E||p_hat - p||^2 per position and the
  teachers' spread E||p - p_bar||^2 around the shard's mean distribution; their quotient is the noise
  ratio (:func:`babyllama.distill.formats.noise_ratio`) the build logs and the report prints.

``top_k``

* ``ids``    (k,)  the k most likely tokens of the tempered ensemble, most likely first;
* ``values`` (k,)  the ensemble's tempered log-probabilities of those tokens (float16);
* ``tail``   ()    the log of the remaining probability mass, log(1 - sum of the top-k probs), computed
  in float32 from the full distribution (absent when k covers the whole vocabulary).

  The approximation: both distributions are collapsed onto k + 1 buckets, the k cached tokens and one
  tail bucket. The teacher's buckets are the cached values and tail mass (renormalised, which only
  absorbs float16 rounding); the student's are its tempered probabilities of the same k tokens plus its
  own tail mass 1 - sum of those probabilities (computed as a log-sum-exp over the other tokens, not by
  subtraction). The divergence (forward KL, reverse KL or JS) is then taken between the two
  (k + 1)-bucket distributions. Every one of these divergences is an f-divergence, so collapsing can
  only lower it: the cached KD is a lower bound of the exact KD (equal when k is the vocabulary size,
  up to float16 rounding); inside the tail bucket the student is pushed only to match the total tail
  mass, so the shape of the teacher's tail is not taught. With flat teachers (high T) the top-k hold
  little of the mass and the KD shrinks accordingly (the build prints the share).

Storage per position: sets x S x 3 + 4 bytes (sample; 196 at S = 64, one set) or k x 4 + 4 (top_k; 260 at k = 64).
For ``logit_mean`` the ensemble is softmax(mean logits / T); for ``prob_mean`` it is the mixture of
the teachers' softmax(z / T).

Layout under ``<out_dir>/cache/<key>/``: ``spec.json`` (what the numbers depend on), per shard
``shard-NNNNN.<part>.npy`` (memory-mapped when read) and ``shard-NNNNN.json`` (window range, byte
length and sha256 of each file, and how faithful the shard is), and ``manifest.json`` (written last,
once every shard is done). The key is a hash of the spec: sha256 of every teacher's weights, the data
hash (tokenizer and tokens), the window layout, the ensemble rule and weights, the temperature, the
mode with its k or sample count, seed and sets, every teacher's config.json, the torch and
transformers versions, and the teachers' compute dtype and device kind (the build runs them under
the same autocast as live teachers in the training loop), so any change lands in a new folder. A shard whose files do not match their record is reported and rebuilt;
completed shards of an interrupted build are kept and the build continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from babyllama.data.windows import gather_windows, window_starts
from babyllama.distill.formats import MANIFEST_FILE, CacheFormat, cache_format
from babyllama.distill.loss import CHUNK_ELEMENTS, DenseTeachers, TeacherSource, next_tokens
from babyllama.distributed import barrier, rank, world_size
from babyllama.errors import UserError
from babyllama.io import (
    atomic_path,
    atomic_write_json,
    cached_file_sha256,
    file_sha256,
    read_json,
    stable_hash,
)
from babyllama.progress import bar as progress_bar
from babyllama.runtime import autocast

CACHE_VERSION = 3
SPEC_FILE = "spec.json"
#: Ensemble elements (positions x vocab) a CPU build handles at a time: 4 MB of float32, so the few V-wide
#: passes after the teachers' forward (softmax, entropy, CDF) run in cache, not from memory.
CPU_BUILD_CHUNK = 1 << 20
#: Target bytes per shard (all of its files together).
SHARD_BYTES = 64 << 20

#: Runs the teachers on (b, L) input ids and returns their logits, each (b, L, V) (for a ``per_teacher`` format:
#: each teacher's aligned rows, span.AlignedRows).
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
    top_k: int  # top_k mode; 0 in sample mode
    mode: str = "top_k"  # "top_k" or "sample"
    samples: int = 0  # sample mode: draws per position
    seed: int = 0  # sample mode: seed of the draws
    compute_dtype: str = "float32"  # the teachers' dtype while scoring
    device: str = "cpu"  # the kind of device they ran on (kernels differ in their last bits)
    shard_windows: int = 0  # 0: chosen from SHARD_BYTES
    layout: str = "fixed"
    version: int = CACHE_VERSION
    weighting: str = "fixed"  # distill.weighting; part of the key only when not 'fixed' (older caches stay valid)
    sets: int = 1  # sample mode: independent sets of draws, one per epoch (epoch e reads set e mod sets)
    teacher_configs: tuple[str, ...] = ()  # sha256 of each teacher's config.json, in ensemble order
    libraries: str = ""  # torch and transformers versions (kernels and model code change numbers)

    def __post_init__(self) -> None:
        self.format.check(self)
        if self.shard_windows <= 0:
            per_window = self.seq_len * self.bytes_per_position
            object.__setattr__(self, "shard_windows", max(1, SHARD_BYTES // per_window))

    @property
    def format(self) -> CacheFormat:
        """What a position holds and how it is written and read (:mod:`babyllama.distill.formats`)."""
        return cache_format(self.mode)

    @property
    def k(self) -> int:
        """Slots per position: the top-k, or room for every distinct token of the draws."""
        return self.format.slots(self)

    @property
    def has_tail(self) -> bool:
        return "tail" in self.parts()

    @property
    def ids_dtype(self) -> np.dtype:
        return np.dtype(np.uint16) if self.vocab_size <= 65536 else np.dtype(np.int32)

    @property
    def counts_dtype(self) -> np.dtype:
        return np.dtype(np.uint8) if self.samples <= 255 else np.dtype(np.uint16)

    @property
    def bytes_per_position(self) -> int:
        return self.format.bytes_per_position(self)

    def describe(self) -> str:
        return self.format.describe(self)

    @property
    def n_shards(self) -> int:
        return -(-self.n_windows // self.shard_windows)

    def as_dict(self) -> dict:
        d = json.loads(json.dumps(asdict(self)))  # tuples -> lists, as they read back from JSON
        if d["weighting"] == "fixed":
            del d["weighting"]  # the key of a cache made before the option existed
        return d

    def key(self) -> str:
        return stable_hash(self.as_dict())[:20]

    def shard_range(self, i: int) -> tuple[int, int]:
        return i * self.shard_windows, min((i + 1) * self.shard_windows, self.n_windows)

    def parts(self) -> tuple[str, ...]:
        return self.format.parts(self)


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
        if not all(isinstance(files[p], dict) and isinstance(files[p].get("bytes"), int)
                   and isinstance(files[p].get("sha256"), str) for p in spec.parts()):
            return "record does not list each file's size and sha256"
    except (ValueError, KeyError, TypeError, AttributeError):
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
def _build_shard(group: Sequence[tuple[Path, CacheSpec]], i: int, tokens: np.ndarray, teacher_fn: TeacherFn,
                 device: torch.device, batch_size: int, bar: tqdm) -> None:
    """Shard i of every cache of ``group`` (specs that differ at most in their draw seed) from one teacher pass."""
    spec = group[0][1]
    first, last = spec.shard_range(i)
    n, length = last - first, spec.seq_len
    writers = [s.format.writer(s, n * length, first, device) for _, s in group]
    chunk_rows = max(1, (CHUNK_ELEMENTS if device.type != "cpu" else CPU_BUILD_CHUNK) // spec.vocab_size)
    for start in range(first, last, batch_size):
        stop = min(start + batch_size, last)
        x = gather_windows(tokens, window_starts(np.arange(start, stop), length), length)
        with autocast(device, None if spec.compute_dtype == "float32" else getattr(torch, spec.compute_dtype)):
            logits = teacher_fn(torch.from_numpy(x).to(device))  # as live teachers run: inside the loop's autocast
        offset = (start - first) * length
        bar.update(stop - start)
        if spec.format.per_teacher:  # each teacher's aligned rows over the student's ids (span.py), all stored
            for writer in writers:
                writer.add(slice(offset, offset + (stop - start) * length), logits)
            continue
        for z in logits:
            if z.shape[-1] != spec.vocab_size:
                raise UserError(f"a teacher returned {z.shape[-1]} logits per token, expected vocab size {spec.vocab_size}")
        src = DenseTeachers([z.reshape(-1, spec.vocab_size) for z in logits], spec.temperature, spec.ensemble,
                            spec.weights, spec.weighting, next_tokens(torch.from_numpy(x.astype(np.int64)).to(device)))
        for r in range(0, (stop - start) * length, chunk_rows):
            rows = slice(r, min(r + chunk_rows, (stop - start) * length))
            out = slice(offset + rows.start, offset + rows.stop)
            chunk = spec.format.prepare(spec, out, src.ensemble_rows(rows, normalise=False))
            for writer in writers:
                writer.add(out, chunk)
    for (root, _), writer in zip(group, writers, strict=True):
        arrays = {part: a.reshape(*a.shape[:-2], n, length, a.shape[-1]) if spec.format.per_set(part) else a.reshape(n, length, *a.shape[1:])
                  for part, a in writer.arrays.items()}
        files = {part: _save_npy(root / f"{_shard_name(i)}.{part}.npy", a) for part, a in arrays.items()}
        atomic_write_json(root / f"{_shard_name(i)}.json", {"windows": [first, last], "files": files, **writer.fidelity()})


def _read_or_none(path: Path) -> object:
    """A JSON file's content, None when it does not parse (then it is written again)."""
    try:
        return read_json(path)
    except ValueError:
        return None


def _open_part(root: Path, spec: CacheSpec, i: int, part: str) -> np.ndarray:
    """One array of a verified shard as a read-only memory map; never unpickled (allow_pickle off), and
    refused in one line unless it is the plain numeric array the layout says."""
    path = root / f"{_shard_name(i)}.{part}.npy"
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{path}: not a plain numeric array ({str(e).splitlines()[0]}); delete {root} and run "
                        "again to rebuild the cache") from None
    lo, hi = spec.shard_range(i)
    lead = (spec.sets, hi - lo) if spec.format.per_set(part) else (hi - lo,)
    if array.dtype.kind not in "iuf" or array.ndim < len(lead) or tuple(array.shape[:len(lead)]) != lead:
        raise UserError(f"{path}: holds {array.dtype} {array.shape}, not the cache's layout; delete {root} and run "
                        "again to rebuild the cache")
    return array


class TeacherCache:
    """Read side of a complete cache: rows of cached ensemble distributions by fixed-window index."""

    def __init__(self, root: Path, spec: CacheSpec, built: bool = False) -> None:
        self.root, self.spec = Path(root), spec
        self.built = built  # whether ensure_caches computed any of its shards just now (else it was reopened)
        self._shards = [{part: _open_part(Path(root), spec, i, part) for part in spec.parts()}
                        for i in range(spec.n_shards)]

    @property
    def key(self) -> str:
        return self.spec.key()

    def rows(self, window_ids: Tensor | np.ndarray,
             epochs: Tensor | np.ndarray | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
        """The cached rows of the windows, ids as int64 (B, L, k), the rest as stored:
        top_k: (ids, values float16 (B, L, k), tail float32 (B, L) or None);
        sample: (ids, counts (B, L, k), entropy float32 (B, L)), the draws of set epoch mod sets (epochs
        (B,): each window's epoch; None: epoch 0)."""
        wids = np.asarray(window_ids.cpu() if isinstance(window_ids, Tensor) else window_ids, dtype=np.int64)
        if wids.size and (wids.min() < 0 or wids.max() >= self.spec.n_windows):
            raise ValueError(f"window ids must lie in [0, {self.spec.n_windows}) for the cache (fixed windows), got "
                             f"{wids.min()}..{wids.max()}")
        sw, sets, fmt = self.spec.shard_windows, self.spec.sets, self.spec.format
        ep = np.zeros(len(wids), dtype=np.int64) if epochs is None else np.asarray(epochs, dtype=np.int64).reshape(-1)
        picked = {part: np.stack([self._shards[w // sw][part][(e % sets, w % sw) if per_set else w % sw]
                                  for w, e in zip(wids, ep, strict=True)])
                  for part in self.spec.parts() for per_set in [fmt.per_set(part)]}
        return fmt.rows(picked)

    def source(self, window_ids: Tensor | np.ndarray, device: torch.device,
               epochs: Tensor | np.ndarray | None = None) -> TeacherSource:
        """The teachers' distributions for a batch of windows, flattened to (B * L) rows on ``device``."""
        return self.spec.format.source([None if t is None else t.to(device, non_blocking=True)
                                        for t in self.rows(window_ids, epochs)])


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
    return ensure_caches(cache_root, [spec], tokens, teacher_fn_factory, device=device, batch_size=batch_size,
                         log=log, progress=progress)[0]


def same_pass(a: CacheSpec, b: CacheSpec) -> bool:
    """Whether one teacher pass can build both caches: their specs differ at most in the draws' seed."""
    return dataclasses.replace(a, seed=b.seed) == b


def ensure_caches(
    cache_root: Path,
    specs: Sequence[CacheSpec],
    tokens: np.ndarray,
    teacher_fn_factory: Callable[[], TeacherFn],
    *,
    device: torch.device,
    batch_size: int = 32,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> list[TeacherCache]:
    """:func:`ensure_cache` for specs that differ only in their draws' seed (a sweep's seeds), built together:
    the teachers score each window once and every cache's draws come from the same ensemble rows (each
    cache is bit-identical to one built alone: its draws depend only on its seed, set and shard)."""
    specs = list(dict.fromkeys(specs))
    if not specs or not all(same_pass(specs[0], s) for s in specs):
        raise ValueError("ensure_caches: the specs must differ at most in their draw seed")
    spec = specs[0]
    if len(tokens) < spec.n_windows * spec.seq_len:
        raise UserError(f"cache spec wants {spec.n_windows} windows of {spec.seq_len} tokens, the data has {len(tokens)} tokens")
    roots = [Path(cache_root) / s.key() for s in specs]
    todos = [_shards_to_build(root, s, log) for root, s in zip(roots, specs, strict=True)]
    shards = sorted(set().union(*todos))
    if shards:
        n_todo = sum(spec.shard_range(i)[1] - spec.shard_range(i)[0] for i in shards)
        done = spec.n_shards - len(shards) if world_size() == 1 else None
        resumed = f"; resuming: {done} of {spec.n_shards} shards already built" if done else ""
        building = [(r, s) for r, s, t in zip(roots, specs, todos, strict=True) if t]
        shared = f"; one teacher pass for {len(building)} caches, draw seeds {', '.join(str(s.seed) for _, s in building)}"
        log(f"teacher cache {', '.join(r.name for r, _ in building)}: scoring {n_todo} of {spec.n_windows} windows with "
            f"the teachers ({spec.describe()}, {len(shards)} shard(s){resumed}{shared if len(building) > 1 else ''})")
        teacher_fn = teacher_fn_factory()
        with progress_bar(n_todo, "teacher cache build", "window", enabled=progress) as bar:
            for i in shards:
                group = [(r, s) for r, s, t in zip(roots, specs, todos, strict=True) if i in t]
                _build_shard(group, i, tokens, teacher_fn, device, batch_size, bar)
    for root, s, todo in zip(roots, specs, todos, strict=True):
        _finish(root, s, bool(todo), log)
    return [TeacherCache(root, s, built=bool(todo)) for root, s, todo in zip(roots, specs, todos, strict=True)]


def _shards_to_build(root: Path, spec: CacheSpec, log: Callable[[str], None]) -> list[int]:
    """This rank's shards of the cache at ``root`` that are missing or damaged (removed, to be built again)."""
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
    todo = []
    for i in [i for i in range(spec.n_shards) if i % world_size() == rank()]:
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
    return todo


def _finish(root: Path, spec: CacheSpec, built: bool, log: Callable[[str], None]) -> None:
    """Wait for the other ranks' shards, write the manifest (rank 0) and say how faithful a new cache is."""
    manifest_path = root / MANIFEST_FILE
    if world_size() > 1:
        _wait_for(lambda: all(_check_shard(root, spec, i, verify_hash=False) is None for i in range(spec.n_shards)),
                  "cache shards")
    if rank() == 0:
        shards = [read_json(root / f"{_shard_name(i)}.json") for i in range(spec.n_shards)]
        manifest = {"key": spec.key(), "spec": spec.as_dict(), "shards": shards}
        if not manifest_path.is_file() or _read_or_none(manifest_path) != manifest:
            atomic_write_json(manifest_path, manifest)
        line = spec.format.coverage_line(root.name, spec, shards) if built else None
        if line:
            log(line)
    if world_size() > 1:
        _wait_for(manifest_path.is_file, "cache manifest")
    barrier()  # under torchrun, no rank reads the cache before rank 0 has finished writing its manifest


#: Windows the teachers score to plan ``samples: auto`` (spread over the data), and the most draws it picks
#: (counts stay uint8, 3 bytes per draw).
PLAN_WINDOWS, MAX_AUTO_SAMPLES = 16, 255


@torch.no_grad()
def plan_samples(spec: CacheSpec, tokens: np.ndarray, teacher_fn: TeacherFn, device: torch.device,
                 target: float) -> dict:
    """``samples: auto``: the fewest draws per position whose noise ratio (:func:`babyllama.distill.formats.noise_ratio`) stays under
    ``target`` on PLAN_WINDOWS windows spread over the data, planned with the multinomial bound
    (1 - sum p^2) / S of the noise, which the systematic draws never exceed:
    S = ceil(mean(1 - sum p^2) / (target * mean ||p - p_bar||^2)), clipped to 1..MAX_AUTO_SAMPLES.
    Flat tempered teachers (high entropy) have little spread and need many draws. Returns the plan
    (samples, the windows' mean tempered entropy, the planned ratio at that S)."""
    wids = np.unique(np.linspace(0, spec.n_windows - 1, min(PLAN_WINDOWS, spec.n_windows)).astype(np.int64))
    x = gather_windows(tokens, window_starts(wids, spec.seq_len), spec.seq_len)
    with autocast(device, None if spec.compute_dtype == "float32" else getattr(torch, spec.compute_dtype)):
        logits = teacher_fn(torch.from_numpy(x).to(device))
    src = DenseTeachers([z.reshape(-1, spec.vocab_size) for z in logits], spec.temperature, spec.ensemble,
                        spec.weights, spec.weighting, next_tokens(torch.from_numpy(x.astype(np.int64)).to(device)))
    p = src.chunk(slice(None))[1].double().exp()
    p_sq = torch.linalg.vecdot(p, p)
    spread = float(p_sq.mean() - p.mean(0).square().sum())
    bound = float((1 - p_sq).mean())
    entropy = float(torch.special.entr(p).sum(-1).mean())
    samples = MAX_AUTO_SAMPLES if spread <= 0 else int(min(MAX_AUTO_SAMPLES, max(1, math.ceil(bound / (target * spread)))))
    return {"samples": samples, "entropy": entropy, "planned_ratio": bound / samples / spread if spread > 0 else None,
            "target": target, "windows": len(wids)}
