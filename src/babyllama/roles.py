"""Who is who in an experiment: every model's role and the stage that trains it, in pipeline order.

The one vocabulary for models: `babyllama run` plans one training stage per member (prepare → the models
→ evaluate → report) and `--force teachers` selects by role; the report, the sweep report (``Role.kind``)
and the model card name models from here, never by matching names or stage strings.
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
    def kind(self) -> str:
        """The short name files and tables use (``sweep.json``): 'teacher' (external ones too), 'student', 'control'."""
        return {Role.STUDENT: "student", Role.CONTROL: "control"}.get(self, "teacher")


@dataclass(frozen=True)
class Member:
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
