"""Stage 3: ensemble distillation (loss, live teachers, teacher-logit cache)."""

from __future__ import annotations

from typing import Any

__all__ = ["distillation_loss"]


def __getattr__(name: str) -> Any:
    """``distillation_loss`` on first use: the report reads cache formats without loading torch."""
    if name == "distillation_loss":
        from babyllama.distill.loss import distillation_loss

        return distillation_loss
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
