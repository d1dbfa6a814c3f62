"""Who is who in an experiment: every model's role and the stage that trains it, in pipeline order.

The one vocabulary for models: `babyllama run` plans one training stage per member (prepare → the models
→ evaluate → report) and `--force teachers` selects by ``Role``, not by a stage name's prefix. Each role
has three spellings, all declared here: ``value`` (how the run report names it), ``short`` (ledger.json
and the rule checks, which take it as a plain string: external teachers apart) and ``kind`` (sweep.json
and the sweep report: every teacher alike). Other modules compare roles or these spellings, never model
names or stage strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from babyllama.config import Config

PREPARE, EVALUATE, REPORT = "prepare", "evaluate", "report"


class Role(Enum):
    """A model's part in the experiment; the value is how the report names it."""

    TEACHER = "teacher"
    #: An existing model (`teachers[].from`): used as it is, never trained here, so it has no stage.
    EXTERNAL_TEACHER = "external teacher"
    STUDENT = "distilled student"
    CONTROL = "control (no distillation)"

    @property
    def short(self) -> str:
        """The plain name of ledger.json and the rule checks: 'teacher', 'external teacher', 'student', 'control'."""
        return {Role.STUDENT: "student", Role.CONTROL: "control"}.get(self, self.value)

    @property
    def kind(self) -> str:
        """The name of ``sweep.json`` and the sweep report: 'teacher' (external ones too), 'student', 'control'."""
        return "teacher" if self is Role.EXTERNAL_TEACHER else self.short


@dataclass(frozen=True)
class Member:
    """One model of a run: its folder name, its role and the `run` stage that trains it."""

    name: str  # the model's folder name under <out_dir>/models/
    role: Role
    stage: str | None  # the `run` stage that trains it; None for an external teacher


def members(cfg: Config) -> list[Member]:
    """Every model of ``cfg`` in training order: the teachers (external ones too), the student, then the
    control (if enabled)."""
    out = [Member(t.name, Role.EXTERNAL_TEACHER, None) if t.external else Member(t.name, Role.TEACHER, f"teacher:{t.name}")
           for t in cfg.teachers]
    if cfg.student is not None:
        out.append(Member(cfg.student.name, Role.STUDENT, "distill"))
        if cfg.control:
            out.append(Member(cfg.control_name, Role.CONTROL, "control"))
    return out


def stage_order(cfg: Config) -> list[str]:
    """The names of `run`'s stages, in the order it runs them."""
    return [PREPARE, *(m.stage for m in members(cfg) if m.stage is not None), EVALUATE, REPORT]
