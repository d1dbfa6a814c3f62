"""The sampled teacher cache: systematic draws, an unbiased KD gradient, a deterministic build, refusals."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from babyllama.cli import main
from babyllama.distill.cache import ensure_cache
from babyllama.distill.formats import draw_samples
from babyllama.distill.loss import DenseTeachers, SampledTeachers, SparseTeachers, combine, ensemble_log_probs
from babyllama.distill.teachers import teacher_dtype
from test_distill_cache import N_WINDOWS, FakeTeachers, L, V, _build, _exact, _spec, _tokens

T, DRAWS, TRIALS = 2.0, 16, 600


def _setup(seed: int = 0, b: int = 2, length: int = 6, v: int = 40):
    g = torch.Generator().manual_seed(seed)
    teachers = [torch.randn(b * length, v, generator=g, dtype=torch.float64) * 3 for _ in range(2)]
    lp = ensemble_log_probs(teachers, T, "logit_mean", [0.5, 0.5])
    student = torch.randn(b, length, v, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, v, (b, length), generator=g)
    return lp, student, labels


def _grad(student: torch.Tensor, source, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
    s = student.clone().requires_grad_(True)
    loss, parts = combine(s, source, labels, alpha=0.0, temperature=T)  # the KD term alone
    loss.backward()
    return s.grad, float(parts["kd"])


def test_systematic_draws_give_each_token_floor_or_ceil_of_its_expected_count():
    lp, _, _ = _setup()
    u = torch.rand(lp.shape[0], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ids, counts = draw_samples(lp, u, DRAWS, DRAWS)
    dense = torch.zeros(lp.shape, dtype=torch.float32).scatter_add_(-1, ids, counts)
    expected = DRAWS * lp.exp()
    assert torch.all(counts.sum(-1) == DRAWS)
    assert torch.all((dense >= expected.floor() - 1e-6) & (dense <= expected.ceil() + 1e-6))
    assert torch.all(counts[:, :-1] >= counts[:, 1:])  # most drawn first


def test_averaged_sampled_gradient_matches_the_exact_kd_gradient():
    """Over many draws the mean gradient is the exact one within sampling error; top-k is biased."""
    lp, student, labels = _setup()
    exact, exact_kd = _grad(student, DenseTeachers([lp], 1.0, "logit_mean", [1.0]), labels)
    rng = torch.Generator().manual_seed(1)
    grads, kds = [], []
    for _ in range(TRIALS):
        u = torch.rand(lp.shape[0], generator=rng, dtype=torch.float64)
        ids, counts = draw_samples(lp, u, DRAWS, DRAWS)
        entropy = torch.special.entr(lp.exp()).sum(-1)
        grad, kd = _grad(student, SampledTeachers.from_counts(ids, counts, entropy), labels)
        grads.append(grad)
        kds.append(kd)
    grads_t = torch.stack(grads)
    mean, sem = grads_t.mean(0), grads_t.std(0) / TRIALS**0.5
    assert grads_t.std(0).max() > 1e-3  # the single draws do differ from each other
    assert torch.all((mean - exact).abs() <= 5 * sem + 1e-9)
    kd_sem = float(np.std(kds)) / TRIALS**0.5
    assert abs(float(np.mean(kds)) - exact_kd) <= 5 * kd_sem + 1e-9
    # the same test catches a biased estimate: top-8 + tail buckets, however many times repeated
    top = lp.topk(8, dim=-1)
    tail = lp.scatter(-1, top.indices, -torch.inf).logsumexp(-1)
    biased, _ = _grad(student, SparseTeachers.from_top_k(top.indices, top.values, tail), labels)
    assert torch.any((biased - exact).abs() > 5 * sem + 1e-9)


def test_sampled_cache_build_is_deterministic_and_keyed(tmp_path):
    spec = _spec(top_k=0, mode="sample", samples=8, seed=5)
    cache, teachers = _build(tmp_path / "a", spec)
    assert teachers.windows == N_WINDOWS and spec.parts() == ("ids", "counts", "entropy")
    ids, counts, entropy = cache.rows(np.arange(N_WINDOWS))
    assert ids.shape == (N_WINDOWS, L, 8) and counts.sum(-1).eq(8).all()
    # a build in other batches draws the same tokens from the same seed
    other = ensure_cache(tmp_path / "b", spec, _tokens(), FakeTeachers, device=torch.device("cpu"), batch_size=5,
                         log=lambda _m: None)
    for a, b in zip(cache.rows(np.arange(N_WINDOWS)), other.rows(np.arange(N_WINDOWS)), strict=True):
        assert torch.equal(a, b)
    x, lp = _exact(spec, np.arange(N_WINDOWS))
    torch.testing.assert_close(entropy.reshape(-1), torch.special.entr(lp.exp()).sum(-1).reshape(-1).float(),
                               atol=1e-5, rtol=1e-5)
    keys = {spec.key()}
    for change in [dict(samples=9), dict(seed=6), dict(compute_dtype="bfloat16"), dict(device="cuda"),
                   dict(mode="top_k", top_k=8, samples=0, seed=0)]:
        keys.add(dataclasses.replace(spec, **change).key())
    assert len(keys) == 6
    source = cache.source(np.array([1, 2]), torch.device("cpu"))
    assert isinstance(source, SampledTeachers) and source.ids.shape == (2 * L, 8)
    student = torch.randn(2, L, V, requires_grad=True)
    with pytest.raises(ValueError, match="forward_kl only"):
        combine(student, source, x[1:3], alpha=0.5, temperature=2.0, divergence="js")


def test_sampled_storage_is_no_larger_than_top_64():
    for vocab in (2000, 16000):
        sampled = _spec(vocab_size=vocab, top_k=0, mode="sample", samples=64)
        assert sampled.bytes_per_position == 196
        assert sampled.bytes_per_position <= _spec(vocab_size=vocab, top_k=64).bytes_per_position == 260


def test_sample_mode_refuses_other_divergences(capsys):
    demo = str(Path(__file__).parents[1] / "configs" / "demo.yaml")
    on = ["--set", "distill.cache.enabled=true", "--set", "distill.divergence=reverse_kl"]
    assert main(["config", demo, *on, "--set", "distill.cache.mode=sample"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "forward_kl only" in err and "mode: top_k" in err
    assert main(["config", demo, *on, "--set", "distill.cache.mode=top_k"]) == 0


def test_teachers_honour_the_students_precision():
    assert teacher_dtype("fp32", torch.device("cuda")) == torch.float32  # fp32 means fp32, on a GPU too
    assert teacher_dtype("bf16", torch.device("cuda")) == torch.bfloat16
    assert teacher_dtype("auto", torch.device("cpu")) == torch.float32
