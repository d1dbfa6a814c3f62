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

The whole loss is one autograd Function that walks the flattened positions in chunks. Each chunk
forms the ensemble, the student's log-softmax at 1 and at T, CE, the divergence and the gradient of
both terms with respect to the student logits in closed form, using fused primitives (log_softmax,
kl_div with log_target, logaddexp, vecdot) and in-place updates. Only that gradient, one tensor shaped
like the student logits, is kept for backward: no (B, L, V) intermediates pile up in the autograd
graph and no full-size ensemble or teacher copy is made (at most one chunk of each).

The same Function serves the teacher-logit cache, whose teacher is a distribution over "buckets":
the k cached token ids plus one tail bucket holding the remaining mass (see cache.py). For a bucket
b with teacher/student masses p_b, q_b and G_b = q_b * dD/dq_b, the gradient is
dD/ds_j = (G_b(j) * q_j / q_b(j) - q_j * sum_b G_b) / T, which reduces to the usual (q - p) / T for
forward KL over the full vocabulary (every token its own bucket). A sampled cache (SampledTeachers)
gives the empirical distribution p_hat of S draws from the ensemble instead: the forward-KL gradient
(q - p_hat) / T is then exact in expectation, and the KD value is -sum p_hat log q - H(p), H(p) stored.
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
WEIGHTINGS = ("fixed", "confidence", "best_token")
DIVERGENCES = ("forward_kl", "reverse_kl", "js")
REDUCTIONS = ("token_mean", "paper")
#: Elements (rows x vocab) handled per chunk: about 16 MB of float32 per temporary.
CHUNK_ELEMENTS = 1 << 22
#: The same for the fused loss (hidden states x output weight), which makes its own logits per chunk: 4 MB,
#: so its several V-wide passes run in cache. Measured on the CPU against 16 MB chunks: the cached step at
#: T = 2 went from 1.52x to 1.11x the fused CE step at vocab 2000 (1.56x to 1.20x at 16000; interleaved in one
#: process, under load).
LINEAR_CHUNK_ELEMENTS = 1 << 20


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
    teacher_logits: Sequence[Tensor], temperature: float, ensemble: str, weights: Sequence[float] | Tensor,
    *, normalise: bool = True,
) -> Tensor:
    """Tempered ensemble log-probabilities (float32) of same-shaped teacher logits (..., V).

    ``weights`` are one number per teacher, or per-position weights shaped (teachers, ...) (see
    :func:`token_weights`). Adds one teacher at a time, so at most one float32 copy of a teacher exists
    besides the result. ``normalise=False`` may return them up to a constant per position (the
    'logit_mean' sum before its log-softmax), for a caller that normalises them more cheaply itself.
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"ensemble must be one of {ENSEMBLES}, got {ensemble!r}")
    acc: Tensor | None = None
    for z, w in zip(teacher_logits, weights, strict=True):
        if isinstance(w, Tensor):  # per position: broadcast over the vocabulary
            w = w.to(_upcast(z[:0]).dtype).unsqueeze(-1)
            if ensemble == "logit_mean":
                term = _upcast(z) * (w / temperature)
                acc = term if acc is None else acc.add_(term)
            else:
                term = F.log_softmax(_upcast(z) / temperature, dim=-1).add_(w.log())
                acc = term if acc is None else torch.logaddexp(acc, term, out=acc)
        elif ensemble == "logit_mean":  # sum_k w_k z_k / T, accumulated in place
            acc = torch.mul(_upcast(z), w / temperature) if acc is None else acc.add_(z, alpha=w / temperature)
        else:
            term = F.log_softmax(_upcast(z) / temperature, dim=-1).add_(math.log(w) if w > 0 else -math.inf)
            acc = term if acc is None else torch.logaddexp(acc, term, out=acc)
    assert acc is not None, "no teachers"
    return F.log_softmax(acc, dim=-1) if ensemble == "logit_mean" and normalise else acc


def token_weights(teacher_logits: Sequence[Tensor], targets: Tensor | None, temperature: float, weighting: str,
                  weights: Sequence[float]) -> Sequence[float] | Tensor:
    """Per-teacher weights for rows of teacher logits (n, V): ``weights`` as they are ('fixed'), or a
    (teachers, n) tensor whose columns sum to 1.

    'confidence': softmax over teachers of log w_k - H_k, H_k the entropy (nats) of teacher k's tempered
    distribution at that position, so a teacher one nat surer counts e times more. 'best_token': all the
    weight on the teacher with the lowest cross-entropy on the true next token ``targets`` (n,) (the first
    on ties); rows without a target (-100) keep ``weights``.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if weighting == "fixed" or len(teacher_logits) == 1:
        return weights
    base = torch.tensor(list(weights), dtype=torch.float32, device=teacher_logits[0].device).unsqueeze(-1)
    if weighting == "confidence":
        scores = []
        for z in teacher_logits:
            lp = F.log_softmax(_upcast(z) / temperature, dim=-1)
            scores.append(torch.linalg.vecdot(lp.exp(), lp).float())  # -H
        return torch.softmax(torch.stack(scores).add_(base.log()), dim=0)
    if targets is None:
        raise ValueError("'best_token' weighting needs the true next tokens")
    y = targets.clamp(min=0).unsqueeze(-1)
    losses = torch.stack([-F.log_softmax(_upcast(z), dim=-1).gather(-1, y).squeeze(-1).float() for z in teacher_logits])
    best = F.one_hot(losses.argmin(0), len(teacher_logits)).T.float()
    return torch.where(targets.unsqueeze(0) >= 0, best, base.expand_as(best))


class TeacherSource(Protocol):
    """Where a chunk of teacher distributions comes from: live logits or the cache."""

    def chunk(self, rows: slice) -> tuple[Tensor | None, Tensor]:
        """For flattened positions ``rows``: (bucket token ids (n, k) or None for the full vocabulary,
        teacher log-probabilities over the buckets (n, V) or (n, k [+ 1 tail]))."""
        ...


@dataclass
class DenseTeachers:
    """Live teacher logits, each flattened to (N, V); the ensemble is formed one chunk at a time, with
    per-position teacher weights unless ``weighting`` is 'fixed' (``targets`` (N,): the true next tokens,
    -100 where there is none, see :func:`next_tokens`)."""

    logits: Sequence[Tensor]
    temperature: float
    ensemble: str
    weights: Sequence[float]
    weighting: str = "fixed"
    targets: Tensor | None = None

    def chunk(self, rows: slice) -> tuple[Tensor | None, Tensor]:
        return None, self.ensemble_rows(rows)

    def ensemble_rows(self, rows: slice, *, normalise: bool = True) -> Tensor:
        """The tempered ensemble's log-probs on ``rows`` (up to a constant per row unless ``normalise``)."""
        logits = [z[rows] for z in self.logits]
        targets = None if self.targets is None else self.targets[rows]
        weights = token_weights(logits, targets, self.temperature, self.weighting, self.weights)
        return ensemble_log_probs(logits, self.temperature, self.ensemble, weights, normalise=normalise)


def next_tokens(labels: Tensor) -> Tensor:
    """(B * L,) the token each position predicts (labels[t + 1]); -100 at each row's last position."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    return targets.reshape(-1)


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


@dataclass
class SampledTeachers:
    """Tokens drawn from the tempered ensemble (flattened to N rows): ids (N, S) and the empirical
    probabilities counts / draws (N, S), 0 in unused slots, whose expectation is the ensemble itself;
    ``entropy`` (N,) is the ensemble's entropy, which makes the KD value unbiased as well. Only the
    forward KL is linear in the teacher's probabilities, so only it is estimated without bias."""

    ids: Tensor
    probs: Tensor
    entropy: Tensor

    @classmethod
    def from_counts(cls, ids: Tensor, counts: Tensor, entropy: Tensor) -> SampledTeachers:
        counts = _upcast(counts)
        return cls(ids.long(), counts / counts.sum(-1, keepdim=True).clamp(min=1), _upcast(entropy))

    def chunk(self, rows: slice) -> tuple[Tensor | None, Tensor]:
        return self.ids[rows], self.probs[rows]


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


#: Floor of the student's tail mass in the cached (top-k + tail) divergence; below it (never seen in
#: practice) the tail term would overflow.
TINY_TAIL = 1e-30


def _chunk(s: Tensor, y: Tensor, ids: Tensor | None, lp: Tensor, *, temperature: float, divergence: str,
           a: Tensor | None, c: Tensor | None, out: Tensor | None,
           entropy: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """One chunk of rows: per-row CE, per-row divergence D and the ensemble's top-1 token.

    With ``out``, also writes the gradient ``a * dCE/ds + c * T * dD/ds`` there, where ``a`` (n, 1) and
    ``c`` (n, 1) are the per-row scales of CE and of D / T. Each line below is one pass over (n, V)
    (at most two full-size temporaries besides ``out``); the bucket algebra of the cache is on (n, k).
    With ``entropy`` (sampled teachers), ``lp`` holds the empirical probabilities of the drawn ``ids``.
    """
    lq1 = F.log_softmax(s, dim=-1)
    ce = -lq1.gather(-1, y).squeeze(-1)
    if entropy is not None:  # sampled: forward KL = -sum p_hat log q - H(p), gradient (q - p_hat) / T
        assert ids is not None and divergence == "forward_kl"
        return ce, _sampled_chunk(s, y, ids, lp, lq1, entropy, temperature, a, c, out), ids[:, 0]  # most drawn
    lq = lq1 if temperature == 1 else F.log_softmax(s * (1.0 / temperature), dim=-1)
    if ids is None:  # full vocabulary
        if divergence == "forward_kl":
            p = lp.exp()
            d = torch.linalg.vecdot(p, lp - lq)
            if out is not None:
                torch.mul(lq.exp().sub_(p), c, out=out)  # (q - p) / T, scaled
        else:
            d, g = _divergence(lp, lq, divergence)
            if out is not None:
                torch.mul(lq.exp().mul_(-g.sum(-1, keepdim=True)).add_(g), c, out=out)
        top = lp.argmax(-1)
    else:  # cached top-k ids + tail bucket
        k = ids.shape[-1]
        lq_top = lq.gather(-1, ids)
        has_tail = lp.shape[-1] == k + 1
        if has_tail:
            q = lq.exp().scatter_(-1, ids, 0.0)  # student probabilities of the tail tokens only
            q_tail = q.sum(-1, keepdim=True).clamp_(min=TINY_TAIL)
            d, g = _divergence(lp, torch.cat([lq_top, q_tail.log()], -1), divergence)
        else:
            d, g = _divergence(lp, lq_top, divergence)
        if out is not None:
            g_sum = g.sum(-1, keepdim=True)
            if has_tail:  # tail token j: G_tail * q_j / q_tail - q_j * sum(G)
                torch.mul(q, (g[:, k:] / q_tail - g_sum) * c, out=out)
                g = g[:, :k]
            else:
                out.zero_()
            out.scatter_(-1, ids, (g - lq_top.exp() * g_sum) * c)  # cached token j: G_j - q_j * sum(G)
        top = ids.gather(-1, lp[:, :k].argmax(-1, keepdim=True)).squeeze(-1)
    if out is not None and a is not None:  # d CE / ds = softmax(s) - onehot(label)
        out.addcmul_(lq1.exp_(), a).scatter_add_(-1, y, -a)
    return ce, d, top


@dataclass
class _Terms:
    """What every chunked variant of the loss shares: per-row targets and weights, the teachers, the options,
    and the running sums of the two terms and of top-1 agreement."""

    targets: Tensor
    ce_weight: Tensor
    kd_weight: Tensor
    source: TeacherSource
    alpha: float
    temperature: float
    divergence: str
    ce: Tensor | None = None
    kd: Tensor | None = None
    agree: Tensor | None = None

    def add(self, s: Tensor, rows: slice, out: Tensor | None) -> None:
        """Fold in the student logits ``s`` (float32 or float64) of ``rows``; with ``out``, write their gradient
        of the loss (before the final T^2 and term weights are applied to the sums) there."""
        if self.ce is None:
            self.ce, self.kd = s.new_zeros(()), s.new_zeros(())
            self.agree = torch.zeros((), dtype=torch.float32, device=s.device)
        y, w_ce, w_kd = self.targets[rows], self.ce_weight[rows], self.kd_weight[rows]
        ids, lp = self.source.chunk(rows)
        entropy = self.source.entropy[rows] if isinstance(self.source, SampledTeachers) else None
        t = self.temperature
        a = (self.alpha * w_ce).unsqueeze(-1) if out is not None and self.alpha > 0 else None
        c = ((1 - self.alpha) * t * w_kd).unsqueeze(-1) if out is not None else None  # T^2 / T: dD/ds has 1 / T
        ce_rows, d, top = _chunk(s, y.clamp(min=0).unsqueeze(-1), ids, lp, temperature=t, divergence=self.divergence,
                                 a=a, c=c, out=out, entropy=entropy)
        self.ce += (ce_rows * w_ce).sum()
        self.kd += (d * w_kd).sum()
        # the student's top-1 is the teacher's when that logit is the row's maximum (a tie counts as agreement):
        # a max over V is ~6x cheaper on the CPU than an argmax, which was a tenth of a cached step
        top1 = s.gather(-1, top.unsqueeze(-1)).squeeze(-1) >= s.amax(-1)
        self.agree += (top1 & (y >= 0) & (w_kd > 0)).sum()

    def outputs(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        kd = self.kd * self.temperature**2
        return self.alpha * self.ce + (1 - self.alpha) * kd, self.ce, kd, self.agree


def _sampled_chunk(s: Tensor, y: Tensor, ids: Tensor, p_hat: Tensor, lq1: Tensor, entropy: Tensor, temperature: float,
                   a: Tensor | None, c: Tensor | None, out: Tensor | None) -> Tensor:
    """The sampled cache's chunk (see :func:`_chunk`; ``lq1`` is log_softmax(s), consumed): per-row KD
    -sum p_hat log q - H and, with ``out``, a * (q1 - onehot(y)) + c * (q - p_hat). Fewer V-wide passes than
    the general case: q at T is one softmax (its log is needed at the S drawn ids only; clamped at the
    smallest float, reached only by a student 87 x T nats surer of another token), and at T = 1 the two
    terms share one softmax and one write."""
    p_hat, entropy = p_hat.to(s.dtype), entropy.to(s.dtype)
    if temperature == 1:
        lq_ids = lq1.gather(-1, ids)
        q = q1 = lq1.exp_()
    else:
        q = torch.softmax(s * (1.0 / temperature), dim=-1)
        lq_ids = q.gather(-1, ids).clamp_(min=torch.finfo(s.dtype).tiny).log_()
        q1 = None
    d = -torch.linalg.vecdot(p_hat, lq_ids) - entropy
    if out is not None:
        assert c is not None
        both = q1 is not None and a is not None
        torch.mul(q, c + a if both else c, out=out).scatter_add_(-1, ids, p_hat * -c)  # unused slots add 0
        if a is not None:
            if not both:
                out.addcmul_(lq1.exp_(), a)
            out.scatter_add_(-1, y, -a)
    return d


class _ChunkedLoss(torch.autograd.Function):
    """alpha * CE + (1 - alpha) * T^2 * sum_rows w_row * D_row, with its gradient computed in the
    forward pass, chunk by chunk; only that gradient is saved for backward.

    Outputs (loss, ce, kd, agree): only ``loss`` is differentiable; ce and kd are its two terms
    (reduced, kd scaled by T^2) and agree counts top-1 matches on predicted rows.
    """

    @staticmethod
    def forward(ctx, student: Tensor, terms: _Terms, chunk_rows: int):
        n = student.shape[0]
        grad = torch.empty(student.shape, dtype=_upcast(student[:0]).dtype, device=student.device) \
            if ctx.needs_input_grad[0] else None
        with torch.autocast(student.device.type, enabled=False):  # precision is chosen explicitly here
            for start in range(0, n, chunk_rows):
                rows = slice(start, min(start + chunk_rows, n))
                terms.add(_upcast(student[rows]), rows, None if grad is None else grad[rows])
        loss, ce, kd, agree = terms.outputs()
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(ce, kd, agree)
        return loss, ce, kd, agree

    @staticmethod
    def backward(ctx, grad_loss: Tensor, *_unused: Tensor):
        (grad,) = ctx.saved_tensors
        return grad.mul_(grad_loss.to(grad.dtype)), None, None  # backward runs once: scale in place


class _LinearChunkedLoss(torch.autograd.Function):
    """The same loss from the final hidden states (N, H) and the output weight (V, H): each chunk of rows
    makes its logits, its loss terms and its gradient w.r.t. the logits (the closed form above), turns that
    into gradients w.r.t. its hidden states and the weight, and drops the logits. The (N, V) logits exist
    one chunk at a time, never whole (Liger Kernel's fused linear losses do this on GPUs in Triton)."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, terms: _Terms, chunk_rows: int):
        want = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        acc = torch.promote_types(hidden.dtype, torch.float32)
        grad_h = torch.empty_like(hidden) if want else None
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want else None
        with torch.autocast(hidden.device.type, enabled=False):
            w = weight.to(hidden.dtype)
            for start in range(0, hidden.shape[0], chunk_rows):
                rows = slice(start, min(start + chunk_rows, hidden.shape[0]))
                h = hidden[rows]
                s = (h @ w.T).to(acc)
                out = torch.empty_like(s) if want else None
                terms.add(s, rows, out)
                if out is not None:
                    g = out.to(h.dtype)
                    grad_h[rows] = g @ w
                    grad_w.add_(g.T @ h)
        loss, ce, kd, agree = terms.outputs()
        ctx.grads = (grad_h, grad_w, weight.dtype)
        ctx.mark_non_differentiable(ce, kd, agree)
        return loss, ce, kd, agree

    @staticmethod
    def backward(ctx, grad_loss: Tensor, *_unused: Tensor):
        grad_h, grad_w, weight_dtype = ctx.grads
        return grad_h * grad_loss.to(grad_h.dtype), (grad_w * grad_loss).to(weight_dtype), None, None


def predicted_mask(labels: Tensor) -> Tensor:
    """(B, L) bool: positions whose logits predict a label (the next label exists and is not ignored)."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return mask


def combine(
    student_logits: Tensor,
    source: TeacherSource,
    labels: Tensor,
    *,
    alpha: float,
    temperature: float,
    divergence: str = "forward_kl",
    reduction: str = "token_mean",
    chunk_elements: int = CHUNK_ELEMENTS,
    kd_mask: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """alpha * CE + (1 - alpha) * T^2 * D for any teacher source; returns (loss, {"ce", "kd", "agree"}).

    CE is the causal-LM cross-entropy (logits at t predict labels[t + 1], mean over non-ignored labels);
    ``kd`` is the reduced, T^2-scaled divergence; ``agree`` the top-1 agreement rate of student and
    ensemble on predicted positions. The parts are detached. ``kd_mask`` (B * L,) bool switches the KD
    term off at positions where the teacher says nothing (span alignment); the reduction is unchanged.
    """
    b, length, v = student_logits.shape
    terms = _terms(labels, source, alpha, temperature, divergence, reduction, _upcast(student_logits[:0, :0]).dtype,
                   kd_mask)
    loss, ce, kd, agree = _ChunkedLoss.apply(student_logits.reshape(b * length, v), terms, max(1, chunk_elements // v))
    return loss, {"ce": ce, "kd": kd, "agree": agree / predicted_mask(labels).sum().clamp(min=1)}


def _terms(labels: Tensor, source: TeacherSource, alpha: float, temperature: float, divergence: str, reduction: str,
           dtype: torch.dtype, kd_mask: Tensor | None = None) -> _Terms:
    """Checked options and the per-row targets and term weights of a (B, L) batch of labels."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if isinstance(source, SampledTeachers) and divergence != "forward_kl":
        raise ValueError(f"sampled teachers give an unbiased estimate of forward_kl only, not {divergence!r}")
    mask = predicted_mask(labels)
    ce_weight = mask.to(dtype) / mask.sum().clamp(min=1)
    kd_weight = ce_weight if reduction == "token_mean" else torch.full_like(ce_weight, 1.0 / labels.shape[0])
    if kd_mask is not None:
        kd_weight = kd_weight * kd_mask.reshape(labels.shape).to(kd_weight.dtype)
    return _Terms(next_tokens(labels), ce_weight.reshape(-1), kd_weight.reshape(-1), source, alpha, temperature,
                  divergence)


def combine_linear(
    hidden: Tensor,
    weight: Tensor,
    source: TeacherSource,
    labels: Tensor,
    *,
    alpha: float,
    temperature: float,
    divergence: str = "forward_kl",
    reduction: str = "token_mean",
    chunk_elements: int = LINEAR_CHUNK_ELEMENTS,
) -> tuple[Tensor, dict[str, Tensor]]:
    """:func:`combine` from the final hidden states (B, L, H) and the output weight (V, H), never holding
    the (B, L, V) logits (see _LinearChunkedLoss); the same loss and gradients up to rounding."""
    b, length, h = hidden.shape
    terms = _terms(labels, source, alpha, temperature, divergence, reduction,
                   torch.promote_types(hidden.dtype, torch.float32))
    loss, ce, kd, agree = _LinearChunkedLoss.apply(hidden.reshape(b * length, h), weight, terms,
                                                   max(1, chunk_elements // weight.shape[0]))
    return loss, {"ce": ce, "kd": kd, "agree": agree / predicted_mask(labels).sum().clamp(min=1)}


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
    weighting: str = "fixed",
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
                           normalised_weights(weights, len(teacher_logits)), weighting, next_tokens(labels))
    return combine(student_logits, source, labels, alpha=alpha, temperature=temperature, divergence=divergence,
                   reduction=reduction)
