"""The distillation objective for the one training loop: CE + KD, teachers live or from the cache.

The loop (babyllama.train.loop.fit) does everything else: data, optimiser, precision, evaluation of the
student's plain dev CE, checkpoints and resume. Only where the teacher distribution comes from differs:

* live: the frozen teachers run on the micro-batch (no grad, in the student's compute precision);
* cache: the rows of the fixed windows in the batch are read from the teacher cache, sampled tokens or
  top-k (the loop must then run with windows="fixed", so that Batch.window_ids name cached windows).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from babyllama.config import DistillConfig
from babyllama.distill import span
from babyllama.distill.cache import TeacherCache
from babyllama.distill.formats import cache_format
from babyllama.distill.loss import DenseTeachers, TeacherSource, combine, combine_linear, next_tokens
from babyllama.distill.span import SpanAligner
from babyllama.distill.teachers import TeacherEnsemble
from babyllama.train.fused_ce import hidden_states_as_logits
from babyllama.train.objective import Batch, Metric


class DistillObjective:
    """alpha * CE + (1 - alpha) * T^2 * D(ensemble || student) with the options of ``opts``."""

    def __init__(
        self,
        opts: DistillConfig,
        teachers: Sequence[tuple[str, str]],
        weights: Sequence[float],
        *,
        load_teachers: Callable[[torch.device, torch.dtype], TeacherEnsemble] | None = None,
        open_cache: Callable[[torch.device], TeacherCache] | None = None,
        cache_key: str | None = None,
        aligners: Sequence[SpanAligner] | None = None,
        fused: bool = False,
    ) -> None:
        """``teachers`` is [(name, weights sha256)] in ensemble order; ``weights`` are normalised. Give
        ``load_teachers(device, dtype)`` for live teachers, or ``open_cache(device)`` and the cache's key.
        Both run in setup(), i.e. only once the loop has accepted the run (a refused resume builds nothing).
        ``fused`` (the student's train.fused_loss): the loss is taken from the final hidden states and the
        output weight a chunk at a time (:func:`combine_linear`), never holding the full logits."""
        if (load_teachers is None) == (open_cache is None) or (open_cache is not None) != (cache_key is not None):
            raise ValueError("give either load_teachers (live teachers) or open_cache with its cache_key")
        self.opts = opts
        self.teachers = list(teachers)
        self.weights = list(weights)
        self.cache_key = cache_key
        self._load_teachers = load_teachers
        self._open_cache = open_cache
        self.aligners = list(aligners) if aligners is not None else None  # span alignment, one per teacher
        self.span = self.aligners is not None or (open_cache is not None and cache_format(opts.cache.mode).per_teacher)
        if self.aligners is not None and (open_cache is not None or len(self.aligners) != len(self.teachers)):
            raise ValueError("live span alignment needs live teachers and one aligner per teacher")
        self.fused = fused and not self.span  # span alignment takes its own loss from the full logits
        self.ensemble: TeacherEnsemble | None = None
        self.cache: TeacherCache | None = None
        self.device = torch.device("cpu")

    def setup(self, device: torch.device, dtype: torch.dtype | None) -> None:
        self.device = device
        if self._load_teachers is not None and self.ensemble is None:
            self.ensemble = self._load_teachers(device, dtype or torch.float32)  # the student's precision
        if self._open_cache is not None and self.cache is None:
            self.cache = self._open_cache(device)
            if self.cache.key != self.cache_key:
                raise RuntimeError(f"opened cache {self.cache.key}, expected {self.cache_key}")

    def _source(self, batch: Batch, vocab: int) -> TeacherSource:
        if self._open_cache is not None:
            assert self.cache is not None, "setup() was not called"
            source = self.cache.source(batch.window_ids, self.device, batch.epochs)
            if source.ids.shape[0] != batch.input_ids.numel():
                raise RuntimeError(f"cache rows cover {source.ids.shape[0]} positions, the batch {batch.input_ids.numel()}")
            return source
        assert self.ensemble is not None, "setup() was not called"
        logits = self.ensemble(batch.input_ids)
        return DenseTeachers([z.reshape(-1, vocab) for z in logits], self.opts.temperature, self.opts.ensemble,
                             self.weights, self.opts.weighting, next_tokens(batch.input_ids))

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, Metric]]:
        if self.fused:
            with hidden_states_as_logits(model) as weight:
                hidden = model(input_ids=batch.input_ids, use_cache=False).logits
            loss, parts = combine_linear(hidden, weight, self._source(batch, weight.shape[0]), batch.input_ids,
                                         alpha=self.opts.alpha, temperature=self.opts.temperature,
                                         divergence=self.opts.divergence, reduction=self.opts.reduction)
            return loss, dict(parts)
        logits = model(input_ids=batch.input_ids, use_cache=False).logits
        if self.span:
            return self._span_loss(logits, batch)
        source = self._source(batch, logits.shape[-1])
        loss, parts = combine(logits, source, batch.input_ids, alpha=self.opts.alpha,
                              temperature=self.opts.temperature, divergence=self.opts.divergence,
                              reduction=self.opts.reduction)
        return loss, dict(parts)

    def _aligned(self, batch: Batch, vocab: int) -> list[span.AlignedRows]:
        """Each teacher's aligned bucket rows for the batch: from the span cache, or its model run live."""
        if self.cache is not None:
            return self.cache.source(batch.window_ids, self.device, batch.epochs)  # the span format's rows
        assert self.ensemble is not None and self.aligners is not None, "setup() was not called"
        return span.score_aligned(self.ensemble.models, self.aligners, batch.input_ids, vocab, self.opts.temperature,
                                  self.device)

    def _span_loss(self, logits: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, Metric]]:
        """Each teacher aligned to the student on the text, its divergence taken on the aligned positions,
        the teachers' losses averaged with the ensemble weights (span.py says what this approximates)."""
        total: torch.Tensor | None = None
        parts: dict[str, Metric] = {}
        aligned = 0.0
        for rows, w in zip(self._aligned(batch, logits.shape[-1]), self.weights, strict=True):
            loss, own = combine(logits, rows.source(), batch.input_ids, alpha=self.opts.alpha,
                                temperature=self.opts.temperature, divergence=self.opts.divergence,
                                reduction=self.opts.reduction, kd_mask=rows.mask)
            share = rows.share
            aligned += w * share
            total = loss * w if total is None else total + loss * w
            for key, value in own.items():  # agree counts aligned positions only: rescale to their share
                value = value / max(share, 1e-9) if key == "agree" else value
                parts[key] = value * w if key not in parts else parts[key] + value * w
        assert total is not None
        parts["aligned"] = aligned  # share of predicted positions with a KD term (weighted over teachers)
        return total, parts

    def fingerprint(self) -> dict:
        return distill_fingerprint(self.opts, self.teachers, self.weights, self.cache_key)


def distill_fingerprint(opts: DistillConfig, teachers: Sequence[tuple[str, str]], weights: Sequence[float],
                        cache_key: str | None) -> dict:
    """What makes one distillation differ from another: loss options, teacher weights, cache key.
    Options added later appear only when they differ from the behaviour before them, so students
    trained before they existed keep their identity."""
    later = {k: v for k, v in (("weighting", opts.weighting), ("vocab_alignment", opts.vocab_alignment))
             if v != type(opts).model_fields[k].default}
    if opts.span_aligned:
        later["span_top_k"] = span.SPAN_TOP_K
    return {
        "objective": "distill",
        "alpha": opts.alpha,
        "temperature": opts.temperature,
        "ensemble": opts.ensemble,
        "weights": list(weights),
        "divergence": opts.divergence,
        "reduction": opts.reduction,
        "teachers": [[name, sha] for name, sha in teachers],
        "cache": _cache_identity(opts, cache_key),
        **later,
    }


def _cache_identity(opts: DistillConfig, cache_key: str | None) -> dict:
    """How the teachers were read: live, or a cache of some mode (and its size), named by its key."""
    if cache_key is None:
        return {"enabled": False, "key": None}
    return {"enabled": True, "mode": opts.cache.mode, **cache_format(opts.cache.mode).identity(opts.cache), "key": cache_key}
