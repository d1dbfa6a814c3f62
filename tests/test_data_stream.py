"""The student and the control train on one data stream: the same windows, in the same order, for the
same number of optimizer steps, with the teacher cache (fixed windows) and without it (random offsets)."""

from __future__ import annotations

import json
import shutil

import pytest

from babyllama.config import Config, save_resolved
from babyllama.pipeline import plan
from babyllama.report import summarize
from babyllama.training import distill, train_model
from helpers import read_metrics


def _stream(cfg: Config, name: str) -> tuple[list[str], dict]:
    """Per-step batch hashes (log_every is 1 in the tiny config) and the training summary."""
    model_dir = cfg.model_dir(name)
    hashes = [r["stream_hash"] for r in read_metrics(model_dir) if "loss" in r]
    return hashes, json.loads((model_dir / "training_summary.json").read_text())


@pytest.mark.parametrize("teachers", ["live", "sample", "top_k"])
def test_student_and_control_consume_identical_batches(prepared_cfg: Config, teachers: str) -> None:
    cfg = prepared_cfg
    cached = teachers != "live"
    cfg.distill.cache.enabled = cached
    cfg.distill.cache.mode = "top_k" if teachers == "top_k" else "sample"
    save_resolved(cfg)
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
    lines = summarize(cfg.out)["approximations"]
    assert any(x.startswith("Data stream: the student and the control trained on identical batches") for x in lines)
    expected = {"live": "Teachers: live",
                "sample": "Teachers: the `sample` cache, 64 tokens drawn per position from the tempered ensemble; the "
                          "forward-KL gradient is unbiased, its sampling noise is the cost (the draws hit",
                "top_k": "Teachers: the `top_k` cache, k = 8 plus one tail bucket; the KD is a lower bound and the "
                         "tail's shape is not taught (the top-k hold"}[teachers]
    assert any(x.startswith(expected) for x in lines), lines


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
    assert "Teachers: live (the exact ensemble at every step; no cached approximation)." in lines
    cfg.student.train.windows = "fixed"  # the control alone retrained on other windows: said plainly
    shutil.rmtree(cfg.checkpoint_dir(cfg.control_name))
    train_model(cfg, "control")
    lines = summarize(cfg.out)["approximations"]
    assert any("did NOT see the same batches (student: random windows" in x for x in lines)
