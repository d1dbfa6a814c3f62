"""Teacher-cache formats: what a cache stores per position, one class per format.

A format owns every fact that differs between caches: which arrays a shard holds (and which carry one
row per set of draws), the writer that fills them from the tempered ensemble's log-probs, the teacher
source the objective reads them back as, the bytes per position, the fields of the cache's spec, the
fidelity the build logs and the report, the sweep report and the model card print, and how a student's
fingerprint names the cache. ``FORMATS`` is the registry; ``distill.cache.mode`` names one of its
entries, and this module is the only place that tells the formats apart. cache.py (layout, shards,
keys, verification) and the objective work through :func:`cache_format` only, so a new format is one
class here plus its name in the config schema.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from babyllama.io import read_json

if TYPE_CHECKING:  # torch loads where tensors are made: the report and the sweep report read fidelity only
    import torch
    from torch import Tensor

    from babyllama.distill.loss import TeacherSource

#: The noise ratio is measured on every NOISE_STRIDE-th position of a shard (an estimate at 1/8 of the cost).
NOISE_STRIDE = 8
MANIFEST_FILE = "manifest.json"


class Writer(Protocol):
    """Fills one shard's arrays, a chunk of positions at a time, and says how faithful the shard is."""

    arrays: dict[str, np.ndarray]  # part -> (n, ...) or, for per-set parts, (sets, n, ...)

    def add(self, out: slice, chunk: Any) -> None: ...
    def fidelity(self) -> dict: ...


def mean_over_shards(shards: Sequence[Mapping], key: str) -> float | None:
    """A shard statistic averaged over the cache, each shard weighted by its windows (None if any lacks it)."""
    sizes = [s["windows"][1] - s["windows"][0] for s in shards]
    values = [s.get(key) for s in shards]
    if not sizes or any(v is None for v in values):
        return None
    return sum(v * n for v, n in zip(values, sizes, strict=True)) / sum(sizes)


def noise_ratio(shards: Sequence[Mapping]) -> float | None:
    """The sampled KD gradient's noise relative to its signal, w.r.t. the student logits, per position:

        E ||p_hat - p||^2  /  E ||p - p_bar||^2,

    the numerator the exact variance of the stored draws (:func:`systematic_noise`), the denominator how far
    the teachers' distributions p sit from their mean p_bar over the shard, i.e. the KD gradient (q - p) / T
    for a student q that knows only that average (every student passes it in its first steps). The factor
    1/T and the loss weights are common to both and cancel. Below 1, the draws' error is smaller than what
    the teachers teach position by position; it is per epoch, and fresh draws each epoch average it down.
    The batch's parameter gradient averages it further over the batch's positions (not counted here)."""
    noise, signal = mean_over_shards(shards, "noise"), mean_over_shards(shards, "signal")
    return None if noise is None or not signal else noise / signal


class CacheFormat(ABC):
    """The interface every format implements (``spec`` is a :class:`babyllama.distill.cache.CacheSpec`)."""

    name: ClassVar[str]
    #: The build's teacher_fn returns each teacher's aligned rows (span.py), not logits over the student's vocabulary.
    per_teacher: ClassVar[bool] = False

    @abstractmethod
    def check(self, spec: Any) -> None:
        """Refuse a spec this format cannot store (ValueError)."""

    @abstractmethod
    def slots(self, spec: Any) -> int:
        """Stored entries per position (the k of the (..., k) arrays)."""
        ...

    @abstractmethod
    def parts(self, spec: Any) -> tuple[str, ...]:
        """The arrays of one shard, by name (``shard-NNNNN.<part>.npy``)."""
        ...

    def per_set(self, part: str) -> bool:
        """Whether ``part`` holds one row per set of draws (leading axis ``sets``)."""
        return False

    @abstractmethod
    def bytes_per_position(self, spec: Any) -> int:
        ...

    @abstractmethod
    def describe(self, spec: Any) -> str:
        """What one position holds, for the build's log and the run's description."""
        ...

    @abstractmethod
    def spec_fields(self, opts: Any, *, samples: int | None, seed: int, sets: int) -> dict:
        """This format's fields of the cache spec from ``distill.cache`` (``opts``); ``samples`` resolves
        ``samples: auto`` when given. Fields the format does not use keep their neutral values."""
        ...

    def needs_plan(self, opts: Any) -> bool:
        """Whether the spec needs the teachers to be scored first (``samples: auto``)."""
        return False

    @abstractmethod
    def writer(self, spec: Any, n: int, first_window: int, device: torch.device) -> Writer:
        ...

    def prepare(self, spec: Any, out: slice, logits: Tensor) -> Any:
        """What every writer of specs that differ only in their draw seed needs from a chunk of the ensemble's
        log-probs up to a constant per row, ``logits`` (positions ``out`` of the shard): computed once, then
        handed to each writer's add (here: the normalised log-probs)."""
        import torch

        return torch.log_softmax(logits, dim=-1)

    @abstractmethod
    def rows(self, picked: Mapping[str, np.ndarray]) -> tuple[Tensor, Tensor, Tensor | None]:
        """The picked rows of each part as tensors, ids int64 first (what ``TeacherCache.rows`` returns)."""
        ...

    @abstractmethod
    def source(self, rows: Sequence[Tensor | None]) -> TeacherSource:
        """The objective's teacher source from :meth:`rows` (flattened to (B * L) positions)."""
        ...

    @abstractmethod
    def fidelity(self, spec: Mapping, shards: Sequence[Mapping]) -> dict:
        """How faithful a built cache is, from its manifest's spec and shard records (numbers only)."""
        ...

    @abstractmethod
    def coverage_line(self, name: str, spec: Any, shards: Sequence[Mapping]) -> str | None:
        """What the build logs once a cache is built."""
        ...

    @abstractmethod
    def identity(self, opts: Any) -> dict:
        """The cache's size as a student's fingerprint and training summary name it."""
        ...

    @abstractmethod
    def report_line(self, identity: Mapping, fid: Mapping) -> str:
        """The report's sentence on what reading the teachers from this cache costs."""
        ...

    @abstractmethod
    def card_words(self, identity: Mapping) -> str:
        """The model card's words on how the student read its teachers."""
        ...

    @abstractmethod
    def sweep_line(self, opts: Any) -> str:
        """The sweep report's sentence on whether the seeds' intervals include the cache's variance."""
        ...


class TopKFormat(CacheFormat):
    """The k most likely tokens of the tempered ensemble, their log-probs (float16) and the log of the tail
    mass (float32, absent when k covers the vocabulary): a lower bound of any divergence (cache.py)."""

    name = "top_k"

    def check(self, spec: Any) -> None:
        if spec.sets != 1:
            raise ValueError(f"draw sets must be >= 1 (1 for top_k), got {spec.sets}")

    def slots(self, spec: Any) -> int:
        return min(spec.top_k, spec.vocab_size)

    def has_tail(self, spec: Any) -> bool:
        return self.slots(spec) < spec.vocab_size

    def parts(self, spec: Any) -> tuple[str, ...]:
        return ("ids", "values", "tail") if self.has_tail(spec) else ("ids", "values")

    def bytes_per_position(self, spec: Any) -> int:
        return self.slots(spec) * (spec.ids_dtype.itemsize + 2) + (4 if self.has_tail(spec) else 0)

    def describe(self, spec: Any) -> str:
        return f"top-{self.slots(spec)} of vocab {spec.vocab_size}"

    def spec_fields(self, opts: Any, *, samples: int | None, seed: int, sets: int) -> dict:
        return {"top_k": opts.top_k, "samples": 0, "seed": 0, "sets": 1}

    def writer(self, spec: Any, n: int, first_window: int, device: torch.device) -> Writer:
        return _TopKWriter(spec, n)

    def rows(self, picked: Mapping[str, np.ndarray]) -> tuple[Tensor, Tensor, Tensor | None]:
        import torch

        tail = torch.from_numpy(picked["tail"]) if "tail" in picked else None
        return torch.from_numpy(picked["ids"].astype(np.int64)), torch.from_numpy(picked["values"]), tail

    def source(self, rows: Sequence[Tensor | None]) -> TeacherSource:
        from babyllama.distill.loss import SparseTeachers

        ids, values, tail = rows
        assert ids is not None and values is not None
        k = ids.shape[-1]
        return SparseTeachers.from_top_k(ids.reshape(-1, k), values.reshape(-1, k),
                                         None if tail is None else tail.reshape(-1))

    def fidelity(self, spec: Mapping, shards: Sequence[Mapping]) -> dict:
        mass = mean_over_shards(shards, "topk_mass")
        return {} if mass is None else {"topk_mass": float(mass)}

    def coverage_line(self, name: str, spec: Any, shards: Sequence[Mapping]) -> str | None:
        mass = mean_over_shards(shards, "topk_mass")
        if mass is None:
            return None
        msg = (f"teacher cache {name}: the top-{self.slots(spec)} hold {100 * mass:.1f}% of the tempered ensemble's "
               "probability mass")
        if mass < 0.5:
            msg += (" — most of the KD signal is the single tail bucket; use distill.cache.mode: sample, raise "
                    "distill.cache.top_k or lower distill.temperature, or distil from live teachers")
        return msg

    def identity(self, opts: Any) -> dict:
        return {"top_k": opts.top_k}

    def report_line(self, identity: Mapping, fid: Mapping) -> str:
        text = (f"Teachers: the `top_k` cache, k = {identity.get('top_k')} plus one tail bucket; the KD is a lower "
                "bound and the tail's shape is not taught")
        if "topk_mass" in fid:
            text += f" (the top-k hold {100 * fid['topk_mass']:.1f}% of the tempered ensemble's mass)"
        return text + "."

    def card_words(self, identity: Mapping) -> str:
        return f", teacher logits from the top-{identity.get('top_k')} cache."

    def sweep_line(self, opts: Any) -> str:
        return "The student read a deterministic top-k teacher cache, built once per teacher set."


class _TopKWriter:
    """Fills a shard's top-k arrays, chunk by chunk, and measures how much mass the top-k hold."""

    def __init__(self, spec: Any, n: int) -> None:
        self.spec, self.k = spec, spec.k
        self.arrays = {"ids": np.empty((n, self.k), dtype=spec.ids_dtype), "values": np.empty((n, self.k), dtype=np.float16)}
        if spec.has_tail:
            self.arrays["tail"] = np.empty((n,), dtype=np.float32)

    def add(self, out: slice, lp: Tensor) -> None:
        import torch

        top = lp.topk(self.k, dim=-1, sorted=True)
        self.arrays["ids"][out] = top.indices.cpu().numpy().astype(self.spec.ids_dtype)
        self.arrays["values"][out] = top.values.clamp(min=-6e4).cpu().numpy().astype(np.float16)
        if "tail" in self.arrays:
            self.arrays["tail"][out] = lp.scatter(-1, top.indices, -torch.inf).logsumexp(-1).float().cpu().numpy()

    def fidelity(self) -> dict:
        """How much of the tempered ensemble the top-k hold: the rest is taught only as one tail bucket."""
        tail = self.arrays.get("tail")
        return {"topk_mass": 1.0 if tail is None else float(1.0 - np.exp(tail.astype(np.float64)).mean())}


class SampleFormat(CacheFormat):
    """Systematic draws from the tempered ensemble: the distinct tokens drawn (ids), how often (counts), per set
    of draws, and the ensemble's entropy: the forward-KL gradient is unbiased (cache.py)."""

    name = "sample"

    def check(self, spec: Any) -> None:
        if spec.sets < 1:
            raise ValueError(f"draw sets must be >= 1 (1 for top_k), got {spec.sets}")

    def slots(self, spec: Any) -> int:
        return min(spec.samples, spec.vocab_size)

    def parts(self, spec: Any) -> tuple[str, ...]:
        return ("ids", "counts", "entropy")

    def per_set(self, part: str) -> bool:
        return part in ("ids", "counts")

    def bytes_per_position(self, spec: Any) -> int:
        return spec.sets * self.slots(spec) * (spec.ids_dtype.itemsize + spec.counts_dtype.itemsize) + 4

    def describe(self, spec: Any) -> str:
        sets = f", {spec.sets} independent sets (one per epoch)" if spec.sets > 1 else ""
        return f"{spec.samples} draws per position from the tempered ensemble{sets}"

    def spec_fields(self, opts: Any, *, samples: int | None, seed: int, sets: int) -> dict:
        return {"top_k": 0, "samples": samples or int(opts.samples), "seed": seed, "sets": sets}

    def needs_plan(self, opts: Any) -> bool:
        return opts.samples == "auto"

    def writer(self, spec: Any, n: int, first_window: int, device: torch.device) -> Writer:
        return _SampleWriter(spec, n, first_window, device)

    def prepare(self, spec: Any, out: slice, logits: Tensor) -> _SampledChunk:
        return _SampledChunk.of(logits, out, spec.samples)

    def rows(self, picked: Mapping[str, np.ndarray]) -> tuple[Tensor, Tensor, Tensor | None]:
        import torch

        return (torch.from_numpy(picked["ids"].astype(np.int64)), torch.from_numpy(picked["counts"].astype(np.int32)),
                torch.from_numpy(picked["entropy"]))

    def source(self, rows: Sequence[Tensor | None]) -> TeacherSource:
        from babyllama.distill.loss import SampledTeachers

        ids, counts, entropy = rows
        assert ids is not None and counts is not None and entropy is not None
        k = ids.shape[-1]
        return SampledTeachers.from_counts(ids.reshape(-1, k), counts.reshape(-1, k), entropy.reshape(-1))

    def fidelity(self, spec: Mapping, shards: Sequence[Mapping]) -> dict:
        out = {key: mean_over_shards(shards, key) for key in ("sampled_mass", "distinct")}
        out["noise_ratio"] = noise_ratio(shards)
        floats = {k: float(v) for k, v in out.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        ints = {"samples": spec.get("samples"), "sets": spec.get("sets", 1)}
        return floats | {k: int(v) for k, v in ints.items() if isinstance(v, int | float) and not isinstance(v, bool)}

    def coverage_line(self, name: str, spec: Any, shards: Sequence[Mapping]) -> str | None:
        mass, distinct = mean_over_shards(shards, "sampled_mass"), mean_over_shards(shards, "distinct")
        ratio = noise_ratio(shards)
        if mass is None or distinct is None:
            return None
        return (f"teacher cache {name}: {spec.samples} draws per position hit {distinct:.1f} distinct tokens holding "
                f"{100 * mass:.1f}% of the tempered ensemble's mass (the KD gradient is unbiased either way)"
                + ("" if ratio is None else f"; draw noise / KD signal per position {ratio:.3g}"))

    def identity(self, opts: Any) -> dict:
        return {"samples": opts.samples}

    def report_line(self, identity: Mapping, fid: Mapping) -> str:
        sets = fid.get("sets", 1)
        text = (f"Teachers: the `sample` cache, {fid.get('samples', identity.get('samples'))} tokens drawn per position "
                "from the tempered ensemble" + (f", fresh draws for each of {sets} epochs" if sets > 1 else "")
                + "; the forward-KL gradient is unbiased, its sampling noise is the cost")
        if "sampled_mass" in fid:
            text += (f" (the draws hit {fid['distinct']:.1f} distinct tokens per position, holding "
                     f"{100 * fid['sampled_mass']:.1f}% of the ensemble's mass)")
        if "noise_ratio" in fid:
            text += (f"; measured noise: the draws' error is {fid['noise_ratio']:.3g} x the KD signal per position "
                     "(squared norms, w.r.t. the logits; README, 'The teacher cache')")
        return text + "."

    def card_words(self, identity: Mapping) -> str:
        return f", teacher logits from the sampled cache ({identity.get('samples')} tokens drawn per position)."

    def sweep_line(self, opts: Any) -> str:
        return ("Each seed's student read its own teacher-cache draws (the draw seed moves with the member's seed, "
                "sweep.py): the intervals include the variation between cache draws.")


def draw_samples(lp: Tensor, u: Tensor, n_samples: int, slots: int) -> tuple[Tensor, Tensor]:
    """Systematic draws from the rows of log-probs ``lp`` (n, V), one uniform ``u`` (n,) per row.

    Draw i of a row is the token whose CDF interval holds (i + u) / n_samples, so token j is drawn
    floor or ceil of n_samples * p_j times and exactly n_samples * p_j times in expectation. Returns the
    ``slots`` most drawn tokens (n, slots) int64 and their counts (n, slots) float32, most drawn first;
    slots beyond the distinct draws have count 0.
    """
    import torch

    return draw_from_blocks(BlockCDF.of((lp if lp.dtype == torch.float64 else lp.float()).exp(), n_samples), u, slots)


@dataclass
class BlockCDF:
    """What the draws of a chunk of rows read, made once for every set of draws: the probabilities (or
    any positive multiple per row) ``p`` (n, V) cut into blocks of ``block`` tokens (the last one padded
    with zeros) and the running sum of the block sums ``cdf`` (n, blocks), in float64.

    Why blocks: a full (n, V) cumulative sum is a sequential scan, the build's costliest pass after the
    teachers at a large vocabulary. The block sums are a vectorised reduction; a draw first finds its
    block in ``cdf`` and then scans only that block's ``block`` tokens, so the work per row is V + V/block
    + S * block instead of a V-wide scan (``block`` ~ sqrt(V / S)). The block prefix is exact to float64,
    the scan in a block float32 over at most 64 tokens: a token's drawing probability moves by ~1e-7,
    orders below the sampling noise sqrt(p_j / S) of any token that can be drawn at S <= 255.
    """

    p: Tensor
    cdf: Tensor
    block: int
    n_samples: int

    @classmethod
    def of(cls, p: Tensor, n_samples: int) -> BlockCDF:
        import torch

        v = p.shape[-1]
        block = int(min(64, max(4, 2 ** round(math.log2(max(1.0, math.sqrt(v / n_samples)))))))
        pad = -v % block
        padded = torch.nn.functional.pad(p, (0, pad)) if pad else p
        ones = torch.ones(block, dtype=p.dtype, device=p.device)  # a matrix-vector product: faster than sum(-1)
        sums = (padded.view(-1, block) @ ones).view(p.shape[0], -1).to(torch.float64)  # <= 64 terms: float32 suffices
        return cls(padded, sums.cumsum_(-1), block, n_samples)


def draw_from_blocks(cdf: BlockCDF, u: Tensor, slots: int) -> tuple[Tensor, Tensor]:
    """:func:`draw_samples` from a chunk's :class:`BlockCDF` (one serves every set of draws)."""
    import torch

    n, n_blocks = cdf.cdf.shape
    s, b = cdf.n_samples, cdf.block
    grid = (torch.arange(s, dtype=torch.float64, device=cdf.cdf.device) + u.to(torch.float64).unsqueeze(-1))
    grid.mul_(cdf.cdf[:, -1:] / s)
    blk = torch.searchsorted(cdf.cdf, grid, right=True).clamp_(max=n_blocks - 1)  # (n, S), sorted along each row
    before = torch.where(blk > 0, cdf.cdf.gather(-1, (blk - 1).clamp_(min=0)), 0.0)
    rest = (grid - before).to(cdf.p.dtype).unsqueeze(-1)  # where the draw falls inside its block
    rows = torch.arange(n, device=blk.device).unsqueeze(-1) * n_blocks
    inside = cdf.p.view(n * n_blocks, b).index_select(0, (rows + blk).view(-1)).view(n, s, b)  # each draw's block
    pos = torch.searchsorted(inside.cumsum(-1), rest, right=True).squeeze(-1)
    over = pos >= b  # only a rounding overshoot past the block can pick a zero-probability token: take its last drawable one
    if bool(over.any()):
        pos[over] = b - 1 - (inside[over].flip(-1) > 0).to(torch.uint8).argmax(-1)
    return _run_counts((blk * b + pos).clamp_(max=cdf.p.shape[-1] - 1), slots)


def _run_counts(draws: Tensor, slots: int) -> tuple[Tensor, Tensor]:
    """The distinct tokens of rows of sorted draws (n, S) and their counts, most drawn first: the counts
    are run lengths (no V-wide count tensor, no top-k over V)."""
    import torch

    start = torch.ones(draws.shape, dtype=torch.bool, device=draws.device)
    start[:, 1:] = draws[:, 1:] != draws[:, :-1]
    run = start.cumsum(-1).sub_(1)  # slot of each draw: its run among the distinct tokens
    counts = torch.zeros(draws.shape, dtype=torch.float32, device=draws.device).scatter_add_(
        -1, run, torch.ones(draws.shape, dtype=torch.float32, device=draws.device))
    ids = torch.zeros_like(draws).scatter_(-1, run, draws)
    counts, order = counts.sort(dim=-1, descending=True, stable=True)  # (n, S), not (n, V)
    return ids.gather(-1, order[:, :slots]), counts[:, :slots]


def systematic_noise(lp: Tensor, n_samples: int) -> Tensor:
    """Per row, E||p_hat - p||^2 of the systematic draws: token j's count is floor(S p_j) plus one
    with probability f_j = frac(S p_j), so its variance is f_j (1 - f_j) and the trace is
    sum_j f_j (1 - f_j) / S^2 (exact; the covariances do not enter a trace). It is at most the
    multinomial (1 - sum p^2) / S that ``samples: auto`` plans with."""
    import torch

    return noise_of_probs((lp if lp.dtype == torch.float64 else lp.float()).exp(), n_samples)


def noise_of_probs(p: Tensor, n_samples: int) -> Tensor:
    """:func:`systematic_noise` from the probabilities (n, V) themselves."""
    import torch

    f = torch.frac(p * n_samples)
    return torch.linalg.vecdot(f, 1 - f) / n_samples**2


@dataclass
class _SampledChunk:
    """The part of a sampled shard's work that does not depend on the draws' seed: the CDF, the entropy and
    the noise statistics of a chunk of positions, made once for every seed that draws from it."""

    logits: Tensor  # the ensemble's log-probs up to a constant per row
    lse: Tensor  # (n, 1) that constant: log-probs = logits - lse
    cdf: BlockCDF
    entropy: np.ndarray
    noise: float
    p_sq: float
    p_sum: Tensor
    rows: int

    @classmethod
    def of(cls, logits: Tensor, out: slice, n_samples: int) -> _SampledChunk:
        """From the ensemble's log-probs up to a constant per row (normalised here: one softmax, the cheapest
        V-wide pass, instead of a log-softmax and an exp): V-wide work is a max, the softmax, one dot
        product and the block sums of :class:`BlockCDF`."""
        import torch

        a = logits if logits.dtype == torch.float64 else logits.float()
        p = torch.softmax(a, dim=-1)
        lse = a.amax(-1, keepdim=True) - p.amax(-1, keepdim=True).log()  # p at the argmax is exp(max - lse)
        entropy = lse.squeeze(-1) - torch.linalg.vecdot(p, a)  # -sum p log p = lse - sum p a
        bad = ~entropy.isfinite()  # a -inf logit (p = 0) gives 0 * -inf: count it 0, as the limit says
        if bool(bad.any()):
            entropy[bad] = lse[bad].squeeze(-1) - torch.linalg.vecdot(p[bad], a[bad].clamp(min=torch.finfo(a.dtype).min))
        sub = slice(-out.start % NOISE_STRIDE, None, NOISE_STRIDE)  # the noise on every NOISE_STRIDE-th position
        ps = p[sub]
        stats = (float(noise_of_probs(ps, n_samples).sum()), float(torch.linalg.vecdot(ps, ps).sum()),
                 ps.sum(0, dtype=torch.float64), len(range(*sub.indices(len(p)))))
        return cls(a, lse, BlockCDF.of(p, n_samples), entropy.float().cpu().numpy(), *stats)

    def probs_at(self, ids: Tensor) -> Tensor:
        """The ensemble's probabilities of tokens ``ids`` (n, k)."""
        return (self.logits.gather(-1, ids) - self.lse).exp()


class _SampleWriter:
    """Fills a shard's sampled arrays, one independent set of draws per epoch; the uniforms depend only on
    the seed, the set and the shard's first window. Also measures the draws' noise (see :func:`noise_ratio`)."""

    def __init__(self, spec: Any, n: int, first_window: int, device: torch.device) -> None:
        import torch

        self.spec, self.device, self.n = spec, device, n
        self.u = [np.random.default_rng([spec.seed, s, first_window]).random(n) for s in range(spec.sets)]
        self.arrays = {"ids": np.empty((spec.sets, n, spec.k), dtype=spec.ids_dtype),
                       "counts": np.empty((spec.sets, n, spec.k), dtype=spec.counts_dtype),
                       "entropy": np.empty((n,), dtype=np.float32)}
        self.mass, self.distinct, self.noise, self.p_sq, self.stat_rows = 0.0, 0.0, 0.0, 0.0, 0
        self.p_sum = torch.zeros(spec.vocab_size, dtype=torch.float64, device=device)

    def add(self, out: slice, chunk: _SampledChunk) -> None:
        import torch

        self.arrays["entropy"][out] = chunk.entropy
        self.noise, self.p_sq, self.stat_rows = self.noise + chunk.noise, self.p_sq + chunk.p_sq, self.stat_rows + chunk.rows
        self.p_sum += chunk.p_sum
        limit = np.iinfo(self.spec.counts_dtype).max
        for s, u in enumerate(self.u):
            ids, counts = draw_from_blocks(chunk.cdf, torch.from_numpy(u[out]).to(self.device), self.spec.k)
            if float(counts[:, 0].max()) > limit:  # cannot happen while counts_dtype follows samples; never wrap
                raise RuntimeError(f"a count of {float(counts[:, 0].max()):.0f} does not fit {self.spec.counts_dtype}")
            self.arrays["ids"][s, out] = ids.cpu().numpy().astype(self.spec.ids_dtype)
            self.arrays["counts"][s, out] = counts.cpu().numpy().astype(self.spec.counts_dtype)
            if s == 0:
                drawn = counts > 0
                self.mass += float((chunk.probs_at(ids) * drawn).sum())
                self.distinct += float(drawn.sum())

    def fidelity(self) -> dict:
        """The share of the ensemble's mass on the tokens drawn, the distinct tokens per position, and the
        draws' noise against the signal (per position, means over the shard; see :func:`noise_ratio`)."""
        m = max(self.stat_rows, 1)
        spread = self.p_sq / m - float(self.p_sum.square().sum()) / m**2  # mean ||p - p_bar||^2
        return {"sampled_mass": self.mass / self.n, "distinct": self.distinct / self.n,
                "noise": self.noise / m, "signal": max(spread, 0.0)}


class SpanFormat(CacheFormat):
    """``vocab_alignment: span``: per teacher and student position, exactly what the live span loss reads
    (span.py): the teacher's top shared tokens as student ids, their tempered log-probs, the tail's log
    mass and whether the position is aligned. Each teacher runs on its own tokenization of the window
    (the build's ``teacher_fn`` returns one :class:`babyllama.distill.span.AlignedRows` per teacher), so the
    cached loss equals the live one up to the float32 storage of the values."""

    name = "span"
    per_teacher = True

    def check(self, spec: Any) -> None:
        if spec.top_k < 1:
            raise ValueError(f"span buckets per position must be >= 1, got {spec.top_k}")

    def slots(self, spec: Any) -> int:
        return spec.top_k

    def parts(self, spec: Any) -> tuple[str, ...]:
        return ("ids", "values", "tail", "aligned")

    def bytes_per_position(self, spec: Any) -> int:
        return len(spec.teachers) * (self.slots(spec) * (spec.ids_dtype.itemsize + 4) + 5)

    def describe(self, spec: Any) -> str:
        return (f"per teacher, its top-{spec.top_k} shared tokens + tail at every aligned position, each teacher on its "
                "own tokenization")

    def spec_fields(self, opts: Any, *, samples: int | None, seed: int, sets: int) -> dict:
        from babyllama.distill import span

        return {"top_k": span.SPAN_TOP_K, "samples": 0, "seed": 0, "sets": 1}

    def writer(self, spec: Any, n: int, first_window: int, device: torch.device) -> Writer:
        return _SpanWriter(spec, n)

    def rows(self, picked: Mapping[str, np.ndarray]) -> tuple[Tensor, Tensor, Tensor | None]:
        import torch

        return (torch.from_numpy(picked["ids"].astype(np.int64)), torch.from_numpy(np.ascontiguousarray(picked["values"])),
                torch.from_numpy(np.ascontiguousarray(picked["tail"])), torch.from_numpy(picked["aligned"] != 0))

    def source(self, rows: Sequence[Tensor | None]) -> Any:
        """One :class:`babyllama.distill.span.AlignedRows` per teacher (the span objective reads them)."""
        from babyllama.distill.span import AlignedRows

        ids, values, tail, aligned = rows
        assert ids is not None and values is not None and tail is not None and aligned is not None
        b, length, n_teachers, k = ids.shape
        out = []
        for t in range(n_teachers):
            v = values[..., t, :].reshape(-1, k)
            own = int(v[0].isfinite().sum()) if len(v) else k  # slots past the teacher's shared tokens hold -inf
            tl = tail[..., t].reshape(-1)
            out.append(AlignedRows(ids[..., t, :own].reshape(-1, own), v[:, :own],
                                   None if bool(tl.isnan().all()) else tl, aligned[..., t].reshape(-1),
                                   b * (length - 1)))
        return out

    def fidelity(self, spec: Mapping, shards: Sequence[Mapping]) -> dict:
        out = {key: mean_over_shards(shards, key) for key in ("aligned", "bucket_mass")}
        return {k: float(v) for k, v in out.items() if v is not None}

    def coverage_line(self, name: str, spec: Any, shards: Sequence[Mapping]) -> str | None:
        aligned, mass = mean_over_shards(shards, "aligned"), mean_over_shards(shards, "bucket_mass")
        if aligned is None or mass is None:
            return None
        return (f"teacher cache {name}: {100 * aligned:.1f}% of the student's predicting positions are aligned with "
                f"the teachers' tokens (mean over teachers); there the top-{spec.top_k} shared tokens hold "
                f"{100 * mass:.1f}% of the teachers' tempered mass")

    def identity(self, opts: Any) -> dict:
        from babyllama.distill import span

        return {"span_top_k": span.SPAN_TOP_K}

    def report_line(self, identity: Mapping, fid: Mapping) -> str:
        text = (f"Teachers: the `span` cache, per teacher its top-{identity.get('span_top_k')} shared tokens plus one "
                "tail bucket at every aligned position (what the live span loss reads, stored exactly)")
        if "aligned" in fid and "bucket_mass" in fid:
            text += (f"; {100 * fid['aligned']:.1f}% of the predicting positions are aligned, and there the buckets "
                     f"hold {100 * fid['bucket_mass']:.1f}% of the teachers' tempered mass")
        return text + "."

    def card_words(self, identity: Mapping) -> str:
        return f", span-aligned teacher logits from the cache (top-{identity.get('span_top_k')} shared tokens per teacher)."

    def sweep_line(self, opts: Any) -> str:
        return "The student read a deterministic span-aligned teacher cache, built once per teacher set."


class _SpanWriter:
    """Fills a span shard from each teacher's aligned rows; measures the aligned share and the buckets' mass."""

    def __init__(self, spec: Any, n: int) -> None:
        t, k = len(spec.teachers), spec.top_k
        self.arrays = {"ids": np.zeros((n, t, k), dtype=spec.ids_dtype),
                       "values": np.full((n, t, k), -np.inf, dtype=np.float32),
                       "tail": np.full((n, t), np.nan, dtype=np.float32), "aligned": np.zeros((n, t), dtype=np.uint8)}
        self.aligned, self.mass, self.positions = 0.0, 0.0, 0

    def add(self, out: slice, chunk: Sequence[Any]) -> None:
        self.positions += chunk[0].positions
        for t, rows in enumerate(chunk):
            k = rows.ids.shape[-1]
            self.arrays["ids"][out, t, :k] = rows.ids.cpu().numpy()
            self.arrays["values"][out, t, :k] = rows.values.float().cpu().numpy()
            if rows.tail is not None:
                self.arrays["tail"][out, t] = rows.tail.float().cpu().numpy()
            self.arrays["aligned"][out, t] = rows.mask.cpu().numpy()
            n_aligned = float(rows.mask.sum())
            self.aligned += n_aligned / len(chunk)
            self.mass += float(rows.values[rows.mask].float().exp().sum()) / len(chunk)

    def fidelity(self) -> dict:
        """The share of predicting positions aligned (mean over teachers) and, there, the buckets' mass."""
        return {"aligned": self.aligned / max(self.positions, 1), "bucket_mass": self.mass / max(self.aligned, 1e-9)}


#: The registry: every cache format by the name ``distill.cache.mode`` gives it.
FORMATS: dict[str, CacheFormat] = {f.name: f for f in (SampleFormat(), TopKFormat(), SpanFormat())}


def cache_format(name: str) -> CacheFormat:
    """The format named ``name`` (ValueError naming the known ones otherwise)."""
    try:
        return FORMATS[name]
    except (KeyError, TypeError):
        raise ValueError(f"cache mode must be one of {', '.join(map(repr, FORMATS))}, got {name!r}") from None


def fidelity(root: Path) -> dict:
    """How faithful a built cache is, from its manifest, as its format states it ({"topk_mass"} or
    {"sampled_mass", "distinct", "noise_ratio", "samples", "sets"}; numbers only)."""
    try:
        manifest = read_json(Path(root) / MANIFEST_FILE)
        shards, spec = manifest["shards"], manifest["spec"]
        return cache_format(spec.get("mode", "top_k")).fidelity(spec, shards)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, ZeroDivisionError):
        return {}  # a damaged manifest states nothing (ensure_cache rewrites it from the verified shards)
