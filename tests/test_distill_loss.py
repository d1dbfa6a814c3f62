"""The distillation loss against a slow, direct implementation (explicit loops, exp/log/sum, float64)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from babyllama.distill import distillation_loss
from babyllama.distill.loss import SparseTeachers, combine


def _softmax(x: torch.Tensor) -> torch.Tensor:
    e = torch.exp(x - x.max())
    return e / e.sum()


def _kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return sum(a[i] * (torch.log(a[i]) - torch.log(b[i])) for i in range(len(a)))


def reference_loss(student, teachers, labels, *, alpha, temperature, ensemble, divergence, reduction, weights):
    """Obviously-correct loss: one position at a time, probabilities built by hand."""
    b_size, length, _ = student.shape
    w = [1.0 / len(teachers)] * len(teachers) if weights is None else [x / sum(weights) for x in weights]
    ce_sum, n_ce = 0.0, 0
    kd_sum, n_kd = 0.0, 0
    for b in range(b_size):
        for t in range(length):
            if ensemble == "logit_mean":
                p = _softmax(sum(wk * z[b, t] for wk, z in zip(w, teachers, strict=True)) / temperature)
            else:
                p = sum(wk * _softmax(z[b, t] / temperature) for wk, z in zip(w, teachers, strict=True))
            q = _softmax(student[b, t] / temperature)
            if divergence == "forward_kl":
                d = _kl(p, q)
            elif divergence == "reverse_kl":
                d = _kl(q, p)
            else:
                m = (p + q) / 2
                d = 0.5 * _kl(p, m) + 0.5 * _kl(q, m)
            predicted = t + 1 < length and labels[b, t + 1] != -100
            if predicted:
                ce_sum = ce_sum - torch.log(_softmax(student[b, t])[labels[b, t + 1]])
                n_ce += 1
            if reduction == "paper" or predicted:
                kd_sum = kd_sum + d
                n_kd += 1
    ce = ce_sum / n_ce
    kd = temperature**2 * (kd_sum / b_size if reduction == "paper" else kd_sum / n_kd)
    return alpha * ce + (1 - alpha) * kd, ce, kd


def _inputs(seed: int, b: int = 2, length: int = 5, v: int = 11, n_teachers: int = 2):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(b, length, v, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    teachers = [torch.randn(b, length, v, generator=g, dtype=torch.float64) * 3 for _ in range(n_teachers)]
    labels = torch.randint(0, v, (b, length), generator=g)
    labels[0, 2] = -100
    labels[1, length - 1] = -100
    labels[1, 0] = -100  # the first label is never predicted anyway
    return student, teachers, labels


MODES = list(itertools.product(["logit_mean", "prob_mean"], ["forward_kl", "reverse_kl", "js"], ["token_mean", "paper"]))


@pytest.mark.parametrize("ensemble,divergence,reduction", MODES)
def test_matches_reference_value_and_gradient(ensemble, divergence, reduction):
    student, teachers, labels = _inputs(1)
    kw = dict(alpha=0.3, temperature=1.7, ensemble=ensemble, divergence=divergence, reduction=reduction,
              weights=[0.2, 0.6])
    loss, parts = distillation_loss(student, teachers, labels, **kw)
    (grad,) = torch.autograd.grad(loss, student)
    ref, ref_ce, ref_kd = reference_loss(student, teachers, labels, **kw)
    (ref_grad,) = torch.autograd.grad(ref, student)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-9)
    assert parts["ce"].item() == pytest.approx(ref_ce.item(), rel=1e-9)
    assert parts["kd"].item() == pytest.approx(ref_kd.item(), rel=1e-9)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-8, atol=1e-10)


def test_small_chunks_give_the_same_result():
    from babyllama.distill.loss import DenseTeachers

    student, teachers, labels = _inputs(2, b=3, length=7, v=13)
    src = DenseTeachers([z.reshape(-1, 13) for z in teachers], 2.0, "prob_mean", [0.5, 0.5])
    whole, parts = combine(student, src, labels, alpha=0.4, temperature=2.0, divergence="js")
    (g_whole,) = torch.autograd.grad(whole, student)
    chunked, chunked_parts = combine(student, src, labels, alpha=0.4, temperature=2.0, divergence="js",
                                     chunk_elements=13 * 2)
    (g_chunked,) = torch.autograd.grad(chunked, student)
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-12)
    assert chunked_parts["agree"].item() == parts["agree"].item()
    torch.testing.assert_close(g_chunked, g_whole)


def test_paper_reduction_is_the_reference_kldivloss_batchmean():
    student, teachers, labels = _inputs(3, b=3, length=6, v=9, n_teachers=2)
    labels = labels.clamp(min=0)  # the reference code never ignores a label
    t = 2.0
    loss, parts = distillation_loss(student, teachers, labels, alpha=0.5, temperature=t, reduction="paper")
    teacher_mean = torch.stack(teachers).mean(dim=0)
    kl = torch.nn.KLDivLoss(reduction="batchmean")(
        torch.log_softmax(student / t, dim=-1), torch.softmax(teacher_mean / t, dim=-1)
    ) * t**2
    ce = torch.nn.functional.cross_entropy(student[:, :-1].reshape(-1, 9), labels[:, 1:].reshape(-1))
    assert parts["kd"].item() == pytest.approx(kl.item(), rel=1e-10)
    assert loss.item() == pytest.approx((0.5 * ce + 0.5 * kl).item(), rel=1e-10)
    # about seq_len times the token mean
    _, tm = distillation_loss(student, teachers, labels, alpha=0.5, temperature=t, reduction="token_mean")
    assert parts["kd"].item() > 3 * tm["kd"].item()


def test_alpha_extremes_and_identical_teacher():
    student, teachers, labels = _inputs(4)
    loss, parts = distillation_loss(student, teachers, labels, alpha=1.0, temperature=2.0)
    assert loss.item() == pytest.approx(parts["ce"].item())
    assert parts["kd"].item() > 0
    loss, parts = distillation_loss(student, [student.detach().clone()], labels, alpha=0.0, temperature=2.0,
                                    divergence="js")
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert parts["agree"].item() == 1.0
    (grad,) = torch.autograd.grad(loss, student)
    assert grad.abs().max().item() < 1e-12


def test_agreement_counts_top1_matches_on_predicted_positions():
    student = torch.zeros(1, 4, 3)
    student[0, :, 0] = 5.0  # student always predicts token 0
    teacher = torch.zeros(1, 4, 3)
    teacher[0, 0, 0] = teacher[0, 1, 2] = teacher[0, 2, 0] = teacher[0, 3, 1] = 5.0
    labels = torch.tensor([[0, 1, -100, 2]])  # predicted positions: 0 and 2 (position 1 predicts -100)
    _, parts = distillation_loss(student, [teacher], labels, alpha=0.5, temperature=1.0)
    assert parts["agree"].item() == 1.0
    labels = torch.tensor([[0, 1, 2, 2]])  # positions 0, 1, 2: agree on 0 and 2
    _, parts = distillation_loss(student, [teacher], labels, alpha=0.5, temperature=1.0)
    assert parts["agree"].item() == pytest.approx(2 / 3)


def test_bfloat16_student_logits_get_a_bfloat16_gradient():
    student, teachers, labels = _inputs(5)
    s16 = student.detach().to(torch.bfloat16).requires_grad_(True)
    loss, _ = distillation_loss(s16, [z.to(torch.bfloat16) for z in teachers], labels, alpha=0.5, temperature=2.0)
    loss.backward()
    assert s16.grad.dtype == torch.bfloat16 and torch.isfinite(s16.grad.float()).all()
    ref, _ = distillation_loss(student, teachers, labels, alpha=0.5, temperature=2.0)
    assert loss.item() == pytest.approx(ref.item(), rel=0.05)


def test_sparse_buckets_match_a_direct_bucket_computation():
    """Top-k + tail bucket: student tail = 1 - sum of its probs on the cached ids, for every divergence."""
    student, teachers, labels = _inputs(6, b=2, length=4, v=10, n_teachers=1)
    t, k = 1.5, 3
    p_full = torch.softmax(teachers[0] / t, -1)
    top = p_full.topk(k, dim=-1)
    tail = (1 - top.values.sum(-1)).log()
    src = SparseTeachers.from_top_k(top.indices.reshape(-1, k), top.values.log().reshape(-1, k), tail.reshape(-1))
    for divergence in ["forward_kl", "reverse_kl", "js"]:
        _, parts = combine(student, src, labels, alpha=0.5, temperature=t, divergence=divergence,
                           reduction="paper")
        loss, _ = combine(student, src, labels, alpha=0.0, temperature=t, divergence=divergence, reduction="paper")
        (grad,) = torch.autograd.grad(loss, student)
        total = 0.0
        for b in range(2):
            for pos in range(4):
                q = _softmax(student[b, pos] / t)
                ids = top.indices[b, pos]
                qb = torch.cat([q[ids], (1 - q[ids].sum()).reshape(1)])
                pb = torch.cat([top.values[b, pos], (1 - top.values[b, pos].sum()).reshape(1)])
                if divergence == "forward_kl":
                    total = total + _kl(pb, qb)
                elif divergence == "reverse_kl":
                    total = total + _kl(qb, pb)
                else:
                    m = (pb + qb) / 2
                    total = total + 0.5 * _kl(pb, m) + 0.5 * _kl(qb, m)
        ref = t**2 * total / 2
        (ref_grad,) = torch.autograd.grad(ref, student)
        assert parts["kd"].item() == pytest.approx(ref.item(), rel=1e-9), divergence
        torch.testing.assert_close(grad, ref_grad, rtol=1e-7, atol=1e-10)


def test_bad_arguments_raise():
    student, teachers, labels = _inputs(7)
    with pytest.raises(ValueError, match="divergence"):
        distillation_loss(student, teachers, labels, alpha=0.5, temperature=1.0, divergence="tv")
    with pytest.raises(ValueError, match="do not match"):
        distillation_loss(student, [teachers[0][..., :5]], labels, alpha=0.5, temperature=1.0)
    with pytest.raises(ValueError, match="weights"):
        distillation_loss(student, teachers, labels, alpha=0.5, temperature=1.0, weights=[1.0])
    assert math.isfinite(distillation_loss(student, teachers, labels, alpha=0.5, temperature=1.0,
                                           weights=[0.0, 1.0], ensemble="prob_mean")[0].item())
