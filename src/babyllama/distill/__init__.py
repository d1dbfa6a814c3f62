"""Stage 3: ensemble distillation (loss, live teachers, teacher-logit cache)."""

from babyllama.distill.loss import distillation_loss

__all__ = ["distillation_loss"]
