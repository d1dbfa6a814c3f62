"""Roles and stage order come from one place: the pipeline plans with them and the report reads them."""

from __future__ import annotations

import json

from babyllama.config import Config
from babyllama.pipeline import plan
from babyllama.report import verdict
from babyllama.roles import Role, members, stage_order
from babyllama.run_state import RunState


def test_the_pipeline_plans_the_stages_roles_name(tiny_cfg):
    assert [s.name for s in plan(tiny_cfg)] == stage_order(tiny_cfg) == [
        "prepare", "teacher:t-llama", "teacher:t-gpt2", "distill", "control", "evaluate", "report"]
    assert [(m.name, m.role) for m in members(tiny_cfg)] == [
        ("t-llama", Role.TEACHER), ("t-gpt2", Role.TEACHER), ("student", Role.STUDENT), ("student-control", Role.CONTROL)]
    no_control = Config.model_validate({**tiny_cfg.model_dump(mode="json"), "control": False})
    assert "control" not in stage_order(no_control) and [s.name for s in plan(no_control)] == stage_order(no_control)


def test_the_report_orders_recorded_stages_as_the_pipeline_runs_them(tiny_cfg):
    state = {"report": {"seconds": 1.0}, "teacher:t-gpt2": {"seconds": 2.0}, "prepare": {"seconds": 3.0},
             "teacher:t-llama": {"seconds": 4.0}, "teacher:gone": {"seconds": 5.0}, "note": "not a stage"}
    tiny_cfg.out.mkdir(parents=True)
    (tiny_cfg.out / "run_state.json").write_text(json.dumps(state))
    assert list(RunState(tiny_cfg.out).seconds(stage_order(tiny_cfg))) == [
        "prepare", "teacher:t-llama", "teacher:t-gpt2", "report", "teacher:gone"]


def test_the_verdict_finds_models_by_role():
    def model(name: str, role: Role, ce: float) -> dict:
        return {"name": name, "role": role.value, "dev_ce": ce, "headlines": {}}

    lines = verdict([model("t", Role.TEACHER, 3.0), model("s", Role.STUDENT, 3.5), model("c", Role.CONTROL, 4.0)])
    # the control first (the question the run answers), then the teachers; no per-window record: untested
    assert lines[0].startswith("Dev CE vs control `c`: the student is ahead, untested")
    assert lines[1].startswith("Dev CE vs teacher `t`: the student is behind, untested")
    assert lines[2].startswith("Condition: the best teacher is 1.0000 nats/token below the control")
