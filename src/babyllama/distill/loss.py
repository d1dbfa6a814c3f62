"""The distillation loss: L = alpha * CE(student, labels) + (1 - alpha) * T^2 * D(ensemble || student).

Conventions (the reference code's, see docs/babyllama-reference.md section 7):

* ``labels`` are aligned with the inputs (Hugging Face style): the logits at position t predict
  ``labels[t + 1]``; -100 is ignored. CE is the mean over predicted tokens.
* The teacher ensemble is formed at temperature T: ``logit_mean`` averages raw logits (weighted) and
  takes softmax(z / T), as the paper does; ``prob_mean`` mixes the teachers' softmax(z_k / T).
* D is ``forward_kl`` = KL(p_ens || q_student), ``reverse_kl`` = KL(q || p), or ``js`` =
  1/2 KL(p || m) + 1/2 KL(q || m) with m = (p + q) / 2, all on tempered distributions.
* ``token_mean`` averages D over predicted positions; ``paper`` reproduces
  ``KLDivLoss(reduction="batchmean")`` on (B, L, V): D summed over all B*L positions (the last one too,
  which CE never uses) and divided by B, so the KD term is about seq_len times heavier.

The KD term is one autograd Function that walks the flattened positions in chunks. Each chunk forms the
ensemble, the student's tempered log-softmax, the divergence and its gradient with respect to the
student logits in closed form, using fused primitives (log_softmax, kl_div with log_target,
logsumexp). Only that gradient, one tensor shaped like the student logits, is kept for backward, so
no (B, L, V) intermediates pile up in the autograd graph and no full-size ensemble copy is made.

The same Function serves the teacher-logit cache, whose teacher is a distribution over "buckets":
the k cached token ids plus one tail bucket holding the remaining mass (see cache.py). For a bucket
b with teacher/student masses p_b, q_b and G_b = q_b * dD/dq_b, the gradient is
dD/ds_j = (G_b(j) * q_j / q_b(j) - q_j * sum_b G_b) / T, which reduces to the usual (q - p) / T for
forward KL over the full vocabulary (every token its own bucket).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = -100
ENSEMBLES = ("logit_mean", "prob_mean")
DIVERGENCES = ("forward_kl", "reverse_kl", "js")
REDUCTIONS = ("token_mean", "paper")
#: Elements (rows x vocab) handled per chunk: about 16 MB of float32 per temporary.
CHUNK_ELEMENTS = 1 << 22


def _upcast(x: Tensor) -> Tensor:
    """At least float32 (half-precision logits are upcast; float64 stays, for exact tests)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def normalised_weights(weights: Sequence[float] | None, n: int) -> list[float]:
    """Per-teacher ensemble weights summing to 1 (equal when ``weights`` is None)."""
    if weights is None:
        return [1.0 / n] * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} ensemble weights for {n} teachers")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"ensemble weights must be non-negative with a positive sum, got {list(weights)}")
    return [float(w) / total for w in weights]


def ensemble_log_probs(
    teacher_logits: Sequence[Tensor], temperature: float, ensemble: str, weights: Sequence[float]
) -> Tensor:
    """Tempered ensemble log-probabilities (float32) of same-shaped teacher logits (..., V).

    Adds one teacher at a time, so at most one float32 copy of a teacher exists besides the result.
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    acc: Tensor | None = None
    for z, w in zip(teacher_logits, weights, strict=True):
        if ensemble == "logit_mean":
            term = _upcast(z) * w
            acc = term if acc is None else acc.add_(term)
        else:
            term = F.log_softmax(_upcast(z) / temperature, dim=-1).add_(math.log(w) if w > 0 else -math.inf)
            acc = term if acc is None else torch.logaddexp(acc, term, out=acc)
    assert acc is not None, "no teachers"
    return F.log_softmax(acc / temperature, dim=-1) if ensemble == "logit_mean" else acc


class TeacherSource(Protocol):
    """Where a chunk of teacher distributions comes from: live logits or the cache."""

    def chunk(self, rows: slice) -> tuple[Tensor | None, Tensor]:
        """For flattened positions ``rows``: (bucket token ids (n, k) or None for the full vocabulary,
        teacher log-probabilities over the buckets (n, V) or (n, k [+ 1 tail]))."""
        ...


@dataclass
class DenseTeachers:
    """Live teacher logits, each flattened to (N, V); the ensemble is formed one chunk at a time."""

    logits: Sequence[Tensor]
    temperature: float
    ensemble: str
    weights: Sequence[float]

    def chunk(self, rows: slice) -> tuple[Tensor | None, Tensor]:
        return None, ensemble_log_probs([z[rows] for z in self.logits], self.temperature, self.ensemble, self.weights)


@dataclass
class SparseTeachers:
    """Top-k teacher distributions (flattened to N rows): token ids (N, k) and bucket log-probs
    (N, k + 1) whose last column is the tail mass, or (N, k) when k covers the whole vocabulary."""

    ids: Tensor
    log_probs: Tensor

    @classmethod
    def from_top_k(cls, ids: Tensor, values: Tensor, tail: Tensor | None) -> SparseTeachers:
        """Renormalise stored top-k log-probs (any float dtype) and the tail log-mass into buckets."""
        buckets = _upcast(values) if tail is None else torch.cat([_upcast(values), _upcast(tail).unsqueeze(-1)], -1)
        return cls(ids.long(), F.log_softmax(buckets, dim=-1))

    def chunk(self, rows: slice) -> tuple[Tensor | None, Tensor]:
        return self.ids[rows], self.log_probs[rows]


def _divergence(lp: Tensor, lq: Tensor, divergence: str) -> tuple[Tensor, Tensor]:
    """Per-row divergence D and G = q * dD/dq over buckets, from teacher/student log-probs (n, m)."""
    if divergence == "forward_kl":
        d = F.kl_div(lq, lp, reduction="none", log_target=True).sum(-1)
        return d, -lp.exp()
    if divergence == "reverse_kl":
        pointwise = F.kl_div(lp, lq, reduction="none", log_target=True)  # q * (log q - log p)
        return pointwise.sum(-1), pointwise + lq.exp()
    if divergence == "js":
        lm = torch.logaddexp(lp, lq) - math.log(2.0)
        to_q = F.kl_div(lm, lq, reduction="none", log_target=True)  # q * (log q - log m)
        d = 0.5 * (F.kl_div(lm, lp, reduction="none", log_target=True).sum(-1) + to_q.sum(-1))
        return d, 0.5 * to_q
    raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")


def _kd_chunk(
    s: Tensor, ids: Tensor | None, lp: Tensor, temperature: float, divergence: str, need_grad: bool
) -> tuple[Tensor, Tensor | None]:
    """Divergence per row and its gradient w.r.t. the raw student logits ``s`` (n, V) of one chunk."""
    lq_full = F.log_softmax(_upcast(s) / temperature, dim=-1)
    if ids is None:
        d, g = _divergence(lp, lq_full, divergence)
        if not need_grad:
            return d, None
        q = lq_full.exp_()
        return d, q.mul_(-g.sum(-1, keepdim=True)).add_(g).div_(temperature)
    k = ids.shape[-1]
    lq = lq_full.gather(-1, ids)
    has_tail = lp.shape[-1] == k + 1
    if has_tail:
        rest = lq_full.scatter(-1, ids, -math.inf)  # student log-probs outside the top-k
        lq_tail = rest.logsumexp(-1, keepdim=True)
        lq = torch.cat([lq, lq_tail], -1)
    d, g = _divergence(lp, lq, divergence)
    if not need_grad:
        return d, None
    grad = lq_full.exp_().mul_(-g.sum(-1, keepdim=True))
    if has_tail:  # tail tokens share G_tail in proportion to their student probability
        grad.add_(rest.sub_(lq_tail).exp_().mul_(g[:, k:]))
        g = g[:, :k]
    grad.scatter_add_(-1, ids, g)
    return d, grad.div_(temperature)


class _ChunkedKD(torch.autograd.Function):
    """sum_rows weight_row * D_row, with the gradient computed in the forward pass, chunk by chunk."""

    @staticmethod
    def forward(ctx, student: Tensor, row_weight: Tensor, agree_mask: Tensor, source: TeacherSource,
                temperature: float, divergence: str, chunk_rows: int) -> tuple[Tensor, Tensor]:
        n = student.shape[0]
        need_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(student) if need_grad else None
        total = torch.zeros((), dtype=_upcast(student[:0]).dtype, device=student.device)
        agree = torch.zeros((), dtype=torch.float32, device=student.device)
        with torch.autocast(student.device.type, enabled=False):  # precision is chosen explicitly here
            for start in range(0, n, chunk_rows):
                rows = slice(start, min(start + chunk_rows, n))
                ids, lp = source.chunk(rows)
                s, w = student[rows], row_weight[rows]
                d, g = _kd_chunk(s, ids, lp, temperature, divergence, need_grad)
                total += (d * w).sum()
                if grad is not None and g is not None:
                    grad[rows] = g.mul_(w.unsqueeze(-1))
                top = lp[:, : ids.shape[-1]].argmax(-1) if ids is not None else lp.argmax(-1)
                if ids is not None:
                    top = ids.gather(-1, top.unsqueeze(-1)).squeeze(-1)
                agree += ((s.argmax(-1) == top) & agree_mask[rows]).sum()
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(agree)
        return total, agree

    @staticmethod
    def backward(ctx, grad_total: Tensor, _grad_agree: Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_total.to(grad.dtype), None, None, None, None, None, None


def predicted_mask(labels: Tensor) -> Tensor:
    """(B, L) bool: positions whose logits predict a label (the next label exists and is not ignored)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def kd_term(
    student_logits: Tensor,
    source: TeacherSource,
    labels: Tensor,
    *,
    temperature: float,
    divergence: str = "forward_kl",
    reduction: str = "token_mean",
    chunk_elements: int = CHUNK_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """T^2 * D reduced as asked, and the top-1 agreement rate on predicted positions (detached)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    b, length, v = student_logits.shape
    mask = predicted_mask(labels)
    n_pred = mask.sum()
    dtype = _upcast(student_logits[:0, :0]).dtype
    if reduction == "token_mean":
        row_weight = mask.to(dtype) / n_pred.clamp(min=1)
    else:
        row_weight = torch.full((b, length), 1.0 / b, dtype=dtype, device=student_logits.device)
    chunk_rows = max(1, chunk_elements // v)
    total, agree = _ChunkedKD.apply(
        student_logits.reshape(b * length, v), row_weight.reshape(-1), mask.reshape(-1), source,
        temperature, divergence, chunk_rows,
    )
    return total * temperature**2, agree / n_pred.clamp(min=1)


def cross_entropy(student_logits: Tensor, labels: Tensor) -> Tensor:
    """Causal-LM cross-entropy: logits at t predict labels[t + 1], mean over non-ignored labels."""
    v = student_logits.shape[-1]
    targets = labels[:, 1:].reshape(-1)
    total = F.cross_entropy(_upcast(student_logits[:, :-1].reshape(-1, v)), targets, ignore_index=IGNORE_INDEX,
                            reduction="sum")
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)


def combine(student_logits: Tensor, source: TeacherSource, labels: Tensor, *, alpha: float, temperature: float,
            divergence: str = "forward_kl", reduction: str = "token_mean") -> tuple[Tensor, dict[str, Tensor]]:
    """alpha * CE + (1 - alpha) * T^2 * D for any teacher source; parts are detached."""
    ce = cross_entropy(student_logits, labels) if alpha > 0 else None
    kd, agree = kd_term(student_logits, source, labels, temperature=temperature, divergence=divergence,
                        reduction=reduction) if alpha < 1 else (None, None)
    if ce is None:
        with torch.no_grad():
            ce = cross_entropy(student_logits, labels)
        loss = kd
    elif kd is None:
        with torch.no_grad():
            kd, agree = kd_term(student_logits.detach(), source, labels, temperature=temperature,
                                divergence=divergence, reduction=reduction)
        loss = ce
    else:
        loss = alpha * ce + (1 - alpha) * kd
    return loss, {"ce": ce.detach(), "kd": kd.detach(), "agree": agree}


def distillation_loss(
    student_logits: Tensor,
    teacher_logits: Sequence[Tensor],
    labels: Tensor,
    *,
    alpha: float,
    temperature: float,
    ensemble: str = "logit_mean",
    divergence: str = "forward_kl",
    reduction: str = "token_mean",
    weights: Sequence[float] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """alpha * CE + (1 - alpha) * T^2 * D(ensemble || student); returns (loss, {"ce", "kd", "agree"}).

    ``student_logits`` and every entry of ``teacher_logits`` are (B, L, V); ``labels`` is (B, L), aligned
    with the inputs (shifted inside) with -100 ignored. ``parts["kd"]`` is the T^2-scaled, reduced
    divergence, so ``loss = alpha * ce + (1 - alpha) * kd``; ``parts["agree"]`` is the top-1 agreement
    of student and ensemble on predicted positions.
    """
    if not teacher_logits:
        raise ValueError("distillation needs at least one teacher")
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    shape = tuple(student_logits.shape)
    for z in teacher_logits:
        if tuple(z.shape) != shape:
            raise ValueError(f"teacher logits {tuple(z.shape)} do not match student logits {shape}")
    v = shape[-1]
    source = DenseTeachers([z.detach().reshape(-1, v) for z in teacher_logits], temperature, ensemble,
                           normalised_weights(weights, len(teacher_logits)))
    return combine(student_logits, source, labels, alpha=alpha, temperature=temperature, divergence=divergence,
                   reduction=reduction)
