"""Per-token teacher weighting (distill.weighting) through the objective that trains the student."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from babyllama.config import Config, DistillConfig, ModelConfig
from babyllama.distill.objective import DistillObjective, distill_fingerprint
from babyllama.distill.teachers import TeacherEnsemble
from babyllama.models import build_model
from babyllama.train.objective import Batch

V = 40
SPECIAL = {"pad": 0, "bos": 1, "eos": 2}


def _model(seed: int, hidden: int = 16):
    torch.manual_seed(seed)
    cfg = ModelConfig(name=f"m{seed}", arch="llama", hidden_size=hidden, num_layers=1, num_heads=2, intermediate_size=32,
                      max_position_embeddings=32)
    return build_model(cfg, V, SPECIAL).eval()


def _reference(student_logits, teacher_logits, ids, opts: DistillConfig) -> torch.Tensor:
    """The loss written out position by position in float64, with the weights as the docs define them."""
    t, alpha = opts.temperature, opts.alpha
    s = student_logits[0].double()
    zs = [z[0].double() for z in teacher_logits]
    targets = ids[0, 1:]
    ce, kd = 0.0, 0.0
    for pos in range(ids.shape[1] - 1):
        if opts.weighting == "confidence":
            neg_h = torch.stack([(F.softmax(z[pos] / t, -1) * F.log_softmax(z[pos] / t, -1)).sum() for z in zs])
            w = torch.softmax(neg_h + torch.tensor([0.5, 0.5], dtype=torch.float64).log(), 0)
        else:  # best_token
            losses = torch.stack([-F.log_softmax(z[pos], -1)[targets[pos]] for z in zs])
            w = F.one_hot(losses.argmin(), 2).double()
        logp = F.log_softmax(sum(wk * z[pos] for wk, z in zip(w, zs, strict=True)) / t, -1)
        logq = F.log_softmax(s[pos] / t, -1)
        kd += (logp.exp() * (logp - logq)).sum()
        ce += -F.log_softmax(s[pos], -1)[targets[pos]]
    n = ids.shape[1] - 1
    return alpha * ce / n + (1 - alpha) * t * t * kd / n


@pytest.mark.parametrize("weighting", ["confidence", "best_token"])
def test_per_token_weighting_is_the_loss_that_trains(weighting: str) -> None:
    teachers = [_model(1, 32), _model(2, 16)]
    student = _model(3)
    opts = DistillConfig(alpha=0.3, temperature=2.0, weighting=weighting)
    objective = DistillObjective(opts, [("a", "x"), ("b", "y")], [0.5, 0.5],
                                 load_teachers=lambda device, dtype: TeacherEnsemble(teachers))
    objective.setup(torch.device("cpu"), None)
    ids = torch.randint(3, V, (1, 12), generator=torch.Generator().manual_seed(0))
    loss, parts = objective.loss(student, Batch(ids, torch.tensor([-1])))
    with torch.no_grad():
        expected = _reference(student(input_ids=ids).logits, [m(input_ids=ids).logits for m in teachers], ids, opts)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()  # the closed-form gradient matches autograd through the reference
    got = [p.grad.clone() for p in student.parameters()]
    student.zero_grad()
    ref = _reference(student(input_ids=ids).logits, [m(input_ids=ids).logits.detach() for m in teachers], ids, opts)
    ref.backward()
    for g, r in zip(got, (p.grad for p in student.parameters()), strict=True):
        torch.testing.assert_close(g.double(), r.double(), rtol=1e-4, atol=1e-6)
    fixed = DistillObjective(DistillConfig(), [("a", "x")], [1.0], load_teachers=lambda d, t: TeacherEnsemble([]))
    assert "weighting" not in fixed.fingerprint()  # older students keep their identity
    assert distill_fingerprint(opts, [("a", "x")], [1.0], None)["weighting"] == weighting


def test_weighting_is_a_sweep_axis(tiny_cfg: Config) -> None:
    from babyllama.sweep import points

    tree = tiny_cfg.model_dump(mode="json", by_alias=True)
    tree["sweep"] = {"grid": {"distill.weighting": ["fixed", "confidence", "best_token"]}}
    labels = [p.get("distill.weighting") for p in points(Config.model_validate(tree))]
    assert labels == [None, "confidence", "best_token"]


def test_the_cache_stores_the_per_token_weighted_ensemble(prepared_cfg: Config) -> None:
    import numpy as np

    from babyllama.data.tokens import load_tokens
    from babyllama.distill.run import build_teacher_cache, teacher_dirs
    from babyllama.training import train_model

    cfg = prepared_cfg
    for t in cfg.teachers:
        train_model(cfg, t.name)
    cfg.distill.cache.enabled = True
    cfg.distill.cache.mode = "top_k"
    fixed = build_teacher_cache(cfg)
    cfg.distill.weighting = "best_token"
    best = build_teacher_cache(cfg)
    assert best.key != fixed.key
    ids, values, _ = best.rows(np.array([0]))
    window = torch.from_numpy(np.asarray(load_tokens(cfg.data_dir, "train")[: cfg.data.seq_len], dtype=np.int64))[None]
    ensemble = TeacherEnsemble.load(teacher_dirs(cfg), torch.device("cpu"), torch.float32)
    logits = [z[0] for z in ensemble(window)]
    for pos in range(cfg.data.seq_len - 1):  # the cached row is the best teacher's own tempered distribution
        y = window[0, pos + 1]
        k = int(torch.stack([-F.log_softmax(z[pos], -1)[y] for z in logits]).argmin())
        want = F.log_softmax(logits[k][pos] / cfg.distill.temperature, -1)
        assert int(ids[0, pos, 0]) == int(want.argmax())
        torch.testing.assert_close(values[0, pos].float(), want[ids[0, pos]].float(), atol=2e-3, rtol=2e-3)
