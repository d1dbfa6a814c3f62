"""`babyllama train --model NAME`: train a teacher, or the control, from scratch with plain CE."""

from __future__ import annotations

from pathlib import Path

from babyllama.config import Config
from babyllama.errors import UserError
from babyllama.train.loop import fit
from babyllama.train.objective import LMObjective


def train_model(cfg: Config, name: str, resume: bool = False) -> Path:
    """Train model ``name`` ('control' = the student's architecture without distillation); return its folder."""
    if cfg.student is not None and name == cfg.student.name:
        raise UserError(
            f"model {name!r} is the student: train it with `babyllama distill`, or train its architecture alone "
            f"with --model control ({cfg.control_name})"
        )
    model_cfg = cfg.model(name)
    if model_cfg.name == cfg.control_name:  # the student's data stream: same windows, same order, same steps
        return fit(cfg, model_cfg, LMObjective(model_cfg.train.fused_loss), resume=resume, windows=cfg.student_windows,
                   description=f"control {model_cfg.name}")
    return fit(cfg, model_cfg, LMObjective(model_cfg.train.fused_loss), resume=resume, description=f"teacher {model_cfg.name}")
