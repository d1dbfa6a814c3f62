"""The learning-rate schedule: each kind's shape, today's defaults unchanged, and its use by the loop."""

from __future__ import annotations

import pytest
import torch
from transformers import get_cosine_schedule_with_warmup

from babyllama.config import FinetuneConfig, TrainConfig
from babyllama.evaluate.finetune import lr_factor as finetune_lr_factor
from babyllama.lm.schedule import lr_factor, scheduler
from babyllama.training import train_model
from helpers import read_metrics, variant


def _lrs(sched: torch.optim.lr_scheduler.LRScheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(sched.get_last_lr()[0])
        sched.optimizer.step()
        sched.step()
    return out + [sched.get_last_lr()[0]]


def _optimizer(lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


@pytest.mark.parametrize(("warmup", "total"), [(0, 1), (0, 7), (3, 10), (30, 617), (10, 10)])
def test_cosine_default_is_exactly_the_transformers_schedule(warmup, total):
    ours = scheduler(_optimizer(), kind="cosine", total=total, warmup=warmup)
    reference = get_cosine_schedule_with_warmup(_optimizer(), warmup, total)
    assert _lrs(ours, total) == _lrs(reference, total)  # bit for bit: the loop's default numbers do not move
    assert TrainConfig().schedule == "cosine" and TrainConfig().min_lr_ratio == 0.0


def test_linear_default_is_exactly_the_previous_finetuning_schedule():
    total = 13
    hp = FinetuneConfig()
    ours = torch.optim.lr_scheduler.LambdaLR(_optimizer(5e-5), lambda s: finetune_lr_factor(s, total, hp))
    previous = torch.optim.lr_scheduler.LambdaLR(_optimizer(5e-5), lambda s: max(0.0, 1.0 - s / total))
    assert _lrs(ours, total) == _lrs(previous, total)
    cosine = hp.model_copy(update={"schedule": "cosine", "warmup_fraction": 0.1})
    assert finetune_lr_factor(total, total, cosine) == pytest.approx(0.1)  # the 2025 pipeline's floor


@pytest.mark.parametrize("kind", ["cosine", "linear", "wsd"])
def test_each_kind_warms_up_then_decays_monotonically_to_the_floor(kind):
    total, warmup, floor = 50, 5, 0.1
    f = [lr_factor(s, kind=kind, total=total, warmup=warmup, min_lr_ratio=floor) for s in range(total + 1)]
    assert f[:warmup + 1] == [s / warmup for s in range(warmup + 1)]
    assert all(a >= b for a, b in zip(f[warmup:], f[warmup + 1 :], strict=False))
    assert f[-1] == pytest.approx(floor, abs=1e-12)
    assert min(f[warmup:]) >= floor - 1e-12


def test_linear_is_a_straight_line():
    f = [lr_factor(s, kind="linear", total=10) for s in range(11)]
    assert f == pytest.approx([1 - s / 10 for s in range(11)])


def test_wsd_holds_the_peak_then_decays_over_the_last_fraction():
    total, warmup = 110, 10  # 100 steps after warmup, the last 20 of them decaying
    f = [lr_factor(s, kind="wsd", total=total, warmup=warmup, decay_fraction=0.2) for s in range(total + 1)]
    assert all(x == 1.0 for x in f[warmup:90])
    assert f[90:] == pytest.approx([1 - i / 20 for i in range(21)])
    assert all(x == 1.0 for x in (lr_factor(s, kind="wsd", total=20, decay_fraction=0.0) for s in range(21)))


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor(1, kind="step", total=10)  # type: ignore[arg-type]


def test_the_training_loop_follows_the_configured_schedule(prepared_cfg, tmp_path):
    cfg = variant(prepared_cfg, tmp_path / "wsd", schedule="wsd", min_lr_ratio=0.5, decay_fraction=0.5)
    out = train_model(cfg, "t-llama")
    lrs = [r["lr"] for r in read_metrics(out) if "lr" in r]  # after steps 1..6 of 6, warmup 1
    peak = cfg.model("t-llama").train.lr
    expected = [peak * lr_factor(s, kind="wsd", total=6, warmup=1, min_lr_ratio=0.5, decay_fraction=0.5)
                for s in range(1, 7)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert lrs[-1] == pytest.approx(0.5 * peak) and lrs[1] == pytest.approx(peak)
