"""The sampled cache through the run's own code: draws per seed and per epoch, its measured noise, the
key, and caches of K seeds whose averaged parameter gradients match the live teachers'."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from babyllama.config import Config
from babyllama.data.tokens import read_manifest
from babyllama.distill.formats import draw_samples, fidelity, noise_ratio, systematic_noise
from babyllama.distill.loss import ensemble_log_probs, normalised_weights
from babyllama.distill.objective import DistillObjective
from babyllama.distill.run import _teachers, build_teacher_cache, cache_spec, distill_objective
from babyllama.distill.teachers import TeacherEnsemble
from babyllama.models import build_model
from babyllama.train.checkpoint import MANIFEST_FILE
from babyllama.train.objective import Batch
from babyllama.training import train_model
from test_distill_cache import N_WINDOWS, L, _build, _spec

K = 24  # caches (seeds) averaged in the gradient test


def _with(cfg: Config, **cache) -> Config:
    d = cfg.model_dump(mode="json")
    d["distill"]["cache"].update({"enabled": True, "mode": "sample", **cache})
    return Config.model_validate(d)


def _grads(cfg: Config, objective: DistillObjective, batch: Batch) -> torch.Tensor:
    manifest = read_manifest(cfg.data_dir)
    torch.manual_seed(3)  # the same student every time
    model = build_model(cfg.student, int(manifest["vocab_size"]), manifest["special_tokens"])
    objective.setup(torch.device("cpu"), None)
    loss, _ = objective.loss(model, batch)
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]).double()


@pytest.fixture
def teachers_cfg(prepared_cfg: Config) -> Config:
    """The tiny teachers, made confident (final norm x 40, so logits x 40): a few steps leave them near uniform,
    where the KD gradient is too small for any test to see it against the draws' noise."""
    from transformers import AutoModelForCausalLM

    for t in prepared_cfg.teachers:
        train_model(prepared_cfg, t.name)
        folder = prepared_cfg.model_dir(t.name)
        model = AutoModelForCausalLM.from_pretrained(str(folder))
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("model.norm.weight", "ln_f.weight", "ln_f.bias")):
                    p.mul_(40.0)
        model.save_pretrained(str(folder))
        (folder / MANIFEST_FILE).unlink()  # its record describes the weights before
    return prepared_cfg


def test_caches_of_many_seeds_average_to_the_live_gradient(teachers_cfg: Config):
    """alpha 0.5, T 2, two teachers: the mean over K seeds' caches of the student's parameter gradient is
    the live one within its standard errors (a chi-square over every parameter); a biased top-k is not."""
    cfg = teachers_cfg
    _, dirs, teachers = _teachers(cfg)
    weights = normalised_weights(None, len(teachers))
    batch = Batch(input_ids=torch.zeros(1), window_ids=torch.tensor([0, 3, 5, 8]))
    opened = build_teacher_cache(_with(cfg, seed=0, samples=16))
    batch.input_ids = torch.from_numpy(np.stack([_window(cfg, w) for w in batch.window_ids.tolist()]))
    live = _grads(cfg, DistillObjective(cfg.distill, teachers, weights,
                                        load_teachers=lambda d, t: TeacherEnsemble.load(dirs, d, t)), batch)
    draws, keys = [], set()
    for seed in range(K):
        member = _with(cfg, seed=seed, samples=16)
        cache = opened if seed == 0 else build_teacher_cache(member)
        keys.add(cache.key)
        draws.append(_grads(member, DistillObjective(member.distill, teachers, weights, cache_key=cache.key,
                                                     open_cache=lambda _d, c=cache: c), batch))
    assert len(keys) == K  # each seed its own cache
    fused = _grads(cfg, DistillObjective(cfg.distill, teachers, weights, cache_key=opened.key, fused=True,
                                         open_cache=lambda _d: opened), batch)
    torch.testing.assert_close(fused, draws[0], rtol=1e-4, atol=1e-6)  # the student's train.fused_loss path
    g = torch.stack(draws)
    mean, se = g.mean(0), g.std(0) / K**0.5
    used = se > 1e-4 * live.abs().max()  # below, float32 rounding of the two paths outweighs the draws' noise
    assert used.sum() > 100 and g.std(0).max() > 1e-3 * live.abs().max()  # the draws differ
    chi2 = float(((mean - live)[used] / se[used]).square().mean())
    assert 0.5 < chi2 < 1.6, chi2  # E = (K - 1) / (K - 3) for a t statistic
    direction = live / live.norm()
    along = (g - live) @ direction
    proj, proj_se = float(along.mean()), float(along.std()) / K**0.5
    assert abs(proj) < 4 * proj_se + 1e-12
    # the same statistic catches a wrong target: live teachers at T = 1.5 instead of 2
    d = cfg.model_dump(mode="json")
    d["distill"]["temperature"] = 1.5
    other = Config.model_validate(d)
    wrong = _grads(other, DistillObjective(other.distill, teachers, weights,
                                           load_teachers=lambda d, t: TeacherEnsemble.load(dirs, d, t)), batch)
    assert float(((mean - wrong)[used] / se[used]).square().mean()) > 3 * chi2


def _key(cfg: Config) -> str:
    return distill_objective(cfg)[0].fingerprint()["cache"]["key"]


def _window(cfg: Config, w: int) -> np.ndarray:
    from babyllama.data.tokens import load_tokens

    tokens = load_tokens(cfg.data_dir, "train")
    return tokens[w * cfg.data.seq_len:(w + 1) * cfg.data.seq_len].astype(np.int64)


def test_draws_follow_the_students_seed_and_the_key_covers_configs_and_versions(teachers_cfg: Config):
    cfg = _with(teachers_cfg)
    manifest, dirs, teachers = _teachers(cfg)
    spec = cache_spec(cfg, manifest, teachers, 1000, dirs)
    assert spec.seed == cfg.seed and spec.sets == 1 and "torch" in spec.libraries and len(spec.teacher_configs) == 2
    d = cfg.model_dump(mode="json")
    d["student"]["train"].update(seed=99, epochs=3)
    other = cache_spec(Config.model_validate(d), manifest, teachers, 1000, dirs)
    assert other.seed == 99 and other.sets == 3 and other.key() != spec.key()
    for change in [dict(teacher_configs=("x", "y")), dict(libraries="torch 0, transformers 0"), dict(sets=2)]:
        assert dataclasses.replace(spec, **change).key() != spec.key()
    before = _key(cfg)
    config_json = dirs[0] / "config.json"
    config_json.write_text(config_json.read_text().replace("{", '{\n  "babyllama_note": 1,', 1))
    assert _key(cfg) != before


def test_each_epoch_reads_fresh_draws_and_the_build_measures_their_noise(tmp_path):
    spec = _spec(top_k=0, mode="sample", samples=6, seed=1, sets=3)
    cache, teachers = _build(tmp_path, spec)
    assert teachers.windows == N_WINDOWS  # one teacher pass for all three sets
    wids = np.arange(N_WINDOWS)
    sets = [cache.rows(wids, np.full(N_WINDOWS, e))[:2] for e in range(4)]
    assert not torch.equal(sets[0][1], sets[1][1]) and not torch.equal(sets[1][1], sets[2][1])
    assert all(torch.equal(a, b) for a, b in zip(sets[0], sets[3], strict=True))  # epoch 3 reuses set 0
    assert sets[0][1].sum(-1).eq(6).all()
    fid = fidelity(cache.root)
    assert fid["sets"] == 3 and fid["samples"] == 6 and fid["noise_ratio"] > 0
    # the recorded noise is the draws' own: the mean squared error of p_hat over many uniforms
    tokens = np.random.default_rng(0).integers(0, 50, N_WINDOWS * L + 5).astype(np.uint16)
    x = torch.from_numpy(tokens[: 2 * L].astype(np.int64)).reshape(2, L)
    lp = ensemble_log_probs(teachers(x), spec.temperature, spec.ensemble, spec.weights).reshape(-1, 50).double()
    errs = []
    for trial in range(400):
        u = torch.rand(lp.shape[0], generator=torch.Generator().manual_seed(trial), dtype=torch.float64)
        ids, counts = draw_samples(lp, u, 6, 6)
        p_hat = torch.zeros_like(lp).scatter_add_(-1, ids, counts.double() / 6)
        errs.append((p_hat - lp.exp()).square().sum(-1))
    measured = torch.stack(errs).mean(0)
    torch.testing.assert_close(measured, systematic_noise(lp, 6), rtol=0.15, atol=1e-4)
    assert noise_ratio([{"windows": [0, 1], "noise": 0.2, "signal": 0.4}]) == pytest.approx(0.5)


def test_counts_never_wrap(tmp_path):
    lp = torch.log_softmax(torch.tensor([[9.0, 0.0, -3.0]]), -1)
    ids, counts = draw_samples(lp, torch.tensor([0.5]), 255, 3)
    assert counts.sum() == 255 and counts[0, 0] > 250 and ids[0, 0] == 0
    assert _spec(top_k=0, mode="sample", samples=255).counts_dtype == np.uint8
    assert _spec(top_k=0, mode="sample", samples=256).counts_dtype == np.uint16


def test_auto_samples_are_planned_once_from_the_teachers(teachers_cfg: Config, capsys):
    loose, tight = _with(teachers_cfg, samples="auto", noise_target=2.0), _with(teachers_cfg, samples="auto", noise_target=0.05)
    key = _key(loose)  # plans (the teachers score a few windows) and keeps the plan
    assert "samples: auto ->" in capsys.readouterr().out
    cache = build_teacher_cache(loose)
    assert "samples: auto ->" not in capsys.readouterr().out and cache.key == key == _key(loose)
    planned = cache.spec.samples
    assert 1 <= planned < build_teacher_cache(tight).spec.samples <= 255
    assert fidelity(cache.root)["samples"] == planned


def test_a_build_noisier_than_the_target_says_so_once(teachers_cfg: Config, capsys):
    noisy, other_seed = _with(teachers_cfg, samples=2, noise_target=1e-6), _with(teachers_cfg, samples=2, seed=5)
    cache = build_teacher_cache(noisy, companions=[other_seed])  # one teacher pass builds both: one line
    said = [line for line in capsys.readouterr().out.splitlines() if "is above distill.cache.noise_target" in line]
    assert len(said) == 1 and "is above distill.cache.noise_target 1e-06" in said[0]
    assert cache.key in said[0] and build_teacher_cache(other_seed).key in said[0]
    assert f"{fidelity(cache.root)['noise_ratio']:.3g}" in said[0]
    build_teacher_cache(noisy)  # reopened, not built: nothing new to say
    build_teacher_cache(_with(teachers_cfg, samples=3, noise_target=1e6))  # built, under its target
    assert "noise_target" not in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["sample", "dense"])
def test_the_fused_step_matches_the_plain_one(kind):
    """combine_linear (hidden states x output weight, a chunk at a time) gives combine's loss and gradients."""
    from babyllama.distill.loss import DenseTeachers, SampledTeachers, combine, combine_linear

    g = torch.Generator().manual_seed(0)
    b, length, h, v = 2, 7, 5, 30
    hidden = torch.randn(b, length, h, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, v, (b, length), generator=g)
    teachers = [torch.randn(b * length, v, generator=g, dtype=torch.float64) * 2 for _ in range(2)]
    if kind == "dense":
        source = DenseTeachers(teachers, 2.0, "logit_mean", [0.5, 0.5])
    else:
        lp = ensemble_log_probs(teachers, 2.0, "logit_mean", [0.5, 0.5])
        ids, counts = draw_samples(lp, torch.rand(b * length, generator=g, dtype=torch.float64), 8, 8)
        source = SampledTeachers.from_counts(ids, counts, torch.special.entr(lp.exp()).sum(-1))
    plain, parts = combine(hidden @ weight.T, source, labels, alpha=0.5, temperature=2.0)
    expected = torch.autograd.grad(plain, (hidden, weight))
    fused, fparts = combine_linear(hidden, weight, source, labels, alpha=0.5, temperature=2.0, chunk_elements=3 * v)
    got = torch.autograd.grad(fused, (hidden, weight))
    torch.testing.assert_close(fused, plain)
    for key in ("ce", "kd", "agree"):
        torch.testing.assert_close(fparts[key], parts[key])
    for a, e in zip(got, expected, strict=True):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize(("vocab", "samples"), [(1000, 64), (37, 8), (5000, 255)])
def test_block_draws_are_the_full_cdf_draws(vocab, samples):
    """Finding the block first and scanning only it draws exactly the tokens a search of the whole
    float64 CDF draws, zero-probability tokens never (also where the vocabulary is no multiple of a block)."""
    g = torch.Generator().manual_seed(vocab)
    lp = torch.log_softmax(torch.randn(16, vocab, generator=g, dtype=torch.float64) * 3, -1)
    lp[:, ::7] = -torch.inf  # tokens that cannot be drawn, a last block that ends in them included
    lp = lp - lp.logsumexp(-1, keepdim=True)
    u = torch.rand(16, generator=g, dtype=torch.float64)
    ids, counts = draw_samples(lp, u, samples, samples)
    cdf = lp.exp().cumsum(-1)
    grid = (torch.arange(samples, dtype=torch.float64) + u.unsqueeze(-1)) / samples * cdf[:, -1:]
    expected = torch.searchsorted(cdf, grid, right=True)
    got = torch.repeat_interleave(ids.reshape(-1), counts.long().reshape(-1)).reshape(16, samples)
    assert torch.equal(got.sort(-1).values, expected)
    assert counts.sum(-1).eq(samples).all() and not (ids[counts > 0] % 7 == 0).any()


def test_a_rounding_overshoot_in_a_block_lands_on_a_drawable_token():
    from babyllama.distill.formats import BlockCDF, draw_from_blocks

    p = torch.tensor([[0.25, 0.75, 0.0, 0.0]])
    prefix = torch.tensor([[1.0 + 1e-6]], dtype=torch.float64)  # the block sum a hair above the block's own scan
    ids, counts = draw_from_blocks(BlockCDF(p, prefix, 4, 1), torch.tensor([0.9999999]), 1)
    assert ids.tolist() == [[1]] and counts.tolist() == [[1.0]]


def test_auto_samples_share_one_plan_and_one_teacher_pass_across_seeds(teachers_cfg: Config, capsys):
    """A sweep's seeds with samples: auto: one plan, and the first member's build makes every member's cache."""
    first, second = (_with(teachers_cfg, samples="auto", seed=s) for s in (1, 2))
    cache = build_teacher_cache(first, companions=[second])
    out = capsys.readouterr().out
    assert out.count("samples: auto ->") == 1 and "one teacher pass for 2 caches" in out
    other = build_teacher_cache(second)
    assert other.key != cache.key and other.spec.samples == cache.spec.samples
    assert "scoring" not in capsys.readouterr().out  # already built in the first pass
