"""Which candidate a zero-shot item picks, and how much credit it earns, under each tie rule (``eval.ties``).

Every ranking task (BLiMP pairs, EWoK, entity tracking, COMPS, GlobalPIQA) ends the same way: the
candidate with the highest score wins. The pipelines disagree only when scores are equal or undefined:

- a NaN score counts as minus infinity (BabyLM 2026; the earlier code let ``torch.max`` pick a NaN);
- ``correct``: a tie that includes the correct candidate counts as correct (BabyLM 2023-2025, whose first
  argmax always picks the correct candidate, listed first, out of a tie);
- ``wrong``: a tie counts as wrong (our own practice: a model that cannot tell the two apart did not pass);
- ``random``: one of the tied candidates is drawn uniformly (BabyLM 2026, unseeded there; seeded here by
  ``eval.seed`` through a torch generator that draws once per tied item in data order, as the official
  code draws from the global torch generator);
- ``expected``: the mean credit of that draw, 1/k for a k-way tie that includes the correct candidate:
  deterministic, and the number ``random`` scatters around.

One pass computes all four, so a result reports its headline under each rule beside the chosen one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TIE_RULES = ("correct", "wrong", "random", "expected")


@dataclass(frozen=True)
class Decisions:
    """Per item: the credit under each tie rule, and whether the correct candidate shared the top score."""

    credit: dict[str, list[float]]
    tie: list[bool]


def _finite(score: float) -> float:
    return -math.inf if math.isnan(score) else score


def decide(scores: list[list[float]], labels: list[int], seed: int) -> Decisions:
    """Credits of every item (candidate scores, index of the correct one) under every rule in TIE_RULES."""
    generator = torch.Generator().manual_seed(seed)
    credit: dict[str, list[float]] = {rule: [] for rule in TIE_RULES}
    tie: list[bool] = []
    for raw, label in zip(scores, labels, strict=True):
        s = [_finite(x) for x in raw]
        best = max(s)
        top = [i for i, x in enumerate(s) if x == best]
        drawn = top[int(torch.randint(len(top), (1,), generator=generator))] if len(top) > 1 else top[0]
        shared = len(top) > 1 and label in top
        won = float(label in top)
        credit["correct"].append(won)
        credit["wrong"].append(won if not shared else 0.0)
        credit["random"].append(float(drawn == label))
        credit["expected"].append(won / len(top))
        tie.append(shared)
    return Decisions(credit, tie)
