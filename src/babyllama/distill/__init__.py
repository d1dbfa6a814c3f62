"""Stage 3: ensemble distillation (loss, live teachers, teacher-logit cache)."""
