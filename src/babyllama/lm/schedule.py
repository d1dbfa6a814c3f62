"""The learning-rate schedule: one home for the pretraining loop and fine-tuning.

A schedule is a factor of the peak learning rate per optimizer step (``torch.optim.lr_scheduler.LambdaLR``
multiplies it in), in three shapes after a linear warmup from 0 over ``warmup`` steps:

* ``cosine``: half a cosine from 1 down to ``min_lr_ratio`` at the last step (the loop's default;
  the same numbers as ``transformers.get_cosine_schedule_with_warmup``);
* ``linear``: a straight line from 1 down to ``min_lr_ratio`` (fine-tuning's default, as the HF Trainer);
* ``wsd``: warmup-stable-decay: constant at 1, then a linear decay to ``min_lr_ratio`` over the last
  ``decay_fraction`` of the steps after warmup. Every checkpoint taken on the stable part can be
  continued or decayed cheaply, which suits checkpoints at word milestones.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch

Kind = Literal["cosine", "linear", "wsd"]
KINDS: tuple[str, ...] = ("cosine", "linear", "wsd")


def lr_factor(
    step: int,
    *,
    kind: Kind,
    total: int,
    warmup: int = 0,
    min_lr_ratio: float = 0.0,
    decay_fraction: float = 0.2,
) -> float:
    """Multiplier of the peak learning rate after ``step`` optimizer steps of ``total``."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    after = max(1, total - warmup)
    progress = min(1.0, float(step - warmup) / float(after))
    if kind == "cosine":
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif kind == "linear":
        shape = 1.0 - progress
    elif kind == "wsd":
        decay = max(1, round(decay_fraction * after)) if decay_fraction > 0 else 0
        into = step - warmup - (after - decay)
        shape = 1.0 if into <= 0 else 1.0 - float(into) / float(decay)
    else:
        raise ValueError(f"unknown schedule {kind!r} (known: {', '.join(KINDS)})")
    return max(0.0, min_lr_ratio + (1.0 - min_lr_ratio) * shape)


def scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    kind: Kind,
    total: int,
    warmup: int = 0,
    min_lr_ratio: float = 0.0,
    decay_fraction: float = 0.2,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepping ``optimizer`` along :func:`lr_factor` (its state_dict resumes it exactly)."""
    factor = partial(lr_factor, kind=kind, total=total, warmup=warmup, min_lr_ratio=min_lr_ratio,
                     decay_fraction=decay_fraction)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
