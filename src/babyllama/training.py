"""One training spec per model: what a teacher, the student or the control trains on, with which objective,
and the identity `run` skips and resumes by.

`babyllama run` fingerprints the very spec it then fits, and `babyllama train` / `babyllama distill` fit
the same spec, so what a stage trains is decided here once: every model trains with its own
``train.windows`` except the student and the control, which share one data stream
(``Config.student_windows``: the same windows, in the same order, for the same number of steps), so
their difference is the distillation alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from babyllama import identity
from babyllama.config import Config, ModelConfig
from babyllama.distill.run import distill_objective
from babyllama.errors import UserError
from babyllama.roles import Role, members
from babyllama.train.objective import LMObjective, Objective


@dataclass
class TrainingSpec:
    cfg: Config
    model: ModelConfig
    role: Role
    windows: Literal["random", "fixed"] | None  # None: the model's own train.windows
    objective: Objective
    description: str

    def fingerprint(self) -> str:
        """The stage identity: the loop's resume identity of exactly this model, objective and windows."""
        return identity.training_identity(self.cfg, self.model, self.objective.fingerprint(), self.windows)

    def fit(self, resume: bool = False) -> Path:
        from babyllama.train.loop import fit  # here: planning a finished run loads no model code

        return fit(self.cfg, self.model, self.objective, resume=resume, windows=self.windows,
                   description=self.description)


def training_spec(cfg: Config, name: str) -> TrainingSpec:
    """The spec of model ``name`` ('control' names the control too). The student's objective reads the
    teachers' weight hashes, so ask for it once the teachers are trained."""
    model = cfg.model(name)  # refuses an unknown name and an external teacher, in one line
    role = next(m.role for m in members(cfg) if m.name == model.name)
    if role is Role.STUDENT:
        objective, description = distill_objective(cfg)
    else:
        objective = LMObjective(model.train.fused_loss)
        description = f"{'control' if role is Role.CONTROL else 'teacher'} {model.name}"
    windows = cfg.student_windows if role in (Role.STUDENT, Role.CONTROL) else None
    return TrainingSpec(cfg, model, role, windows, objective, description)


def train_model(cfg: Config, name: str, resume: bool = False) -> Path:
    """`babyllama train --model NAME`: a teacher, or the control, from scratch with plain CE; its folder."""
    if cfg.student is not None and name == cfg.student.name:
        raise UserError(
            f"model {name!r} is the student: train it with `babyllama distill`, or train its architecture alone "
            f"with --model control ({cfg.control_name})"
        )
    return training_spec(cfg, name).fit(resume)


def distill(cfg: Config, resume: bool = False) -> Path:
    """`babyllama distill`: the student from the teachers' ensemble; its folder <out_dir>/models/<student>."""
    if cfg.student is None:
        raise UserError("distill: the config has no `student:` section (the model to distil into)")
    return training_spec(cfg, cfg.student.name).fit(resume)
