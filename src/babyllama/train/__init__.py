"""Stage 2: models and the one training loop shared by pretraining and distillation."""
