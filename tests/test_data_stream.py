"""The student and the control train on one data stream: the same windows, in the same order, for the
same number of optimizer steps, with the teacher cache (fixed windows) and without it (random offsets)."""

from __future__ import annotations

import json
import shutil

import pytest

from babyllama.config import Config
from babyllama.distill.run import distill
from babyllama.pipeline import plan
from babyllama.train.pretrain import train_model
from helpers import read_metrics


def _stream(cfg: Config, name: str) -> tuple[list[str], dict]:
    """Per-step batch hashes (log_every is 1 in the tiny config) and the training summary."""
    model_dir = cfg.model_dir(name)
    hashes = [r["stream_hash"] for r in read_metrics(model_dir) if "loss" in r]
    return hashes, json.loads((model_dir / "training_summary.json").read_text())


@pytest.mark.parametrize("cached", [False, True])
def test_student_and_control_consume_identical_batches(prepared_cfg: Config, cached: bool) -> None:
    cfg = prepared_cfg
    cfg.distill.cache.enabled = cached
    for t in cfg.teachers:
        train_model(cfg, t.name)
    distill(cfg)
    train_model(cfg, "control")
    student, s_summary = _stream(cfg, cfg.student.name)
    control, c_summary = _stream(cfg, cfg.control_name)
    assert len(student) == s_summary["steps"] == 6
    assert len(set(student)) == 6  # every step adds its own batch to the chain
    assert student == control
    assert s_summary["stream_hash"] == c_summary["stream_hash"]
    assert s_summary["windows"] == c_summary["windows"] == ("fixed" if cached else "random")


def test_window_mode_is_part_of_both_fingerprints(prepared_cfg: Config) -> None:
    cfg = prepared_cfg

    def fps() -> dict[str, str]:
        stages = {s.name: s for s in plan(cfg)}
        return {name: stages[name].fingerprint() for name in ("control", "teacher:t-llama")}

    live = fps()
    cfg.distill.cache.enabled = True
    cached = fps()
    assert live["control"] != cached["control"]  # the control follows the student onto the fixed windows
    assert live["teacher:t-llama"] == cached["teacher:t-llama"]


def test_report_states_the_shared_data_stream(prepared_cfg: Config) -> None:
    from babyllama.config import save_resolved
    from babyllama.report import summarize

    cfg = prepared_cfg
    cfg.student.train.max_steps = 2
    save_resolved(cfg)
    for t in cfg.teachers:
        train_model(cfg, t.name)
    distill(cfg)
    train_model(cfg, "control")
    lines = summarize(cfg.out)["approximations"]
    assert any(x.startswith("Data stream: the student and the control trained on identical batches (random windows, 2")
               for x in lines)
    cfg.student.train.windows = "fixed"  # the control alone retrained on other windows: said plainly
    shutil.rmtree(cfg.checkpoint_dir(cfg.control_name))
    train_model(cfg, "control")
    lines = summarize(cfg.out)["approximations"]
    assert any("did NOT see the same batches (student: random windows" in x for x in lines)
