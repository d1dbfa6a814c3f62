"""`distill` end to end on the tiny config: live teachers, the cache, resume after a kill, user errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from babyllama.config import Config
from babyllama.distill.objective import DistillObjective
from babyllama.errors import UserError
from babyllama.io import file_sha256
from babyllama.training import distill, train_model, training_spec


def _train_teachers(cfg: Config) -> None:
    for t in cfg.teachers:
        train_model(cfg, t.name)


def _metrics(path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _forget_student(cfg: Config) -> None:
    shutil.rmtree(cfg.checkpoint_dir(cfg.student.name))
    shutil.rmtree(cfg.model_dir(cfg.student.name))


def test_distill_live_then_from_the_cache(prepared_cfg: Config):
    cfg = prepared_cfg
    _train_teachers(cfg)
    out = distill(cfg)
    assert out == cfg.model_dir("student")
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    rows = _metrics(out)
    steps = [r for r in rows if "kd" in r]
    assert len(steps) == 6 and all({"ce", "kd", "agree", "loss"} <= set(r) for r in steps)
    assert all(r["loss"] == pytest.approx(0.5 * r["ce"] + 0.5 * r["kd"], rel=1e-5) for r in steps)
    assert any("dev_loss" in r for r in rows)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["windows"] == "random"
    assert summary["objective"]["teachers"] == [
        [t, file_sha256(cfg.model_dir(t) / "model.safetensors")] for t in ("t-llama", "t-gpt2")
    ]
    assert summary["objective"]["temperature"] == 2.0 and summary["objective"]["divergence"] == "forward_kl"
    assert summary["objective"]["cache"]["key"] is None
    assert summary["objective"] == training_spec(cfg, cfg.student.name).objective.fingerprint()

    _forget_student(cfg)
    cfg.distill.cache.enabled = True
    cfg.student.train.precision = "bf16"  # the autocast path a GPU takes (bf16 student logits)
    out = distill(cfg)
    summary = json.loads((out / "training_summary.json").read_text())
    key = summary["objective"]["cache"]["key"]
    assert key and (cfg.out / "cache" / key / "manifest.json").is_file()
    assert summary["windows"] == "fixed" and summary["objective"] == training_spec(cfg, cfg.student.name).objective.fingerprint()
    steps = [r for r in _metrics(out) if "kd" in r]
    assert len(steps) == 6 and all(r["kd"] > 0 and 0 <= r["agree"] <= 1 for r in steps)


def test_resume_after_a_kill_matches_an_uninterrupted_run(prepared_cfg: Config, monkeypatch):
    cfg = prepared_cfg
    _train_teachers(cfg)
    cfg.distill.cache.enabled = True
    cfg.student.train.save_every = 2
    reference = load_file(distill(cfg) / "model.safetensors")
    _forget_student(cfg)

    real_loss, calls = DistillObjective.loss, []

    def dies_at_step_5(self, model, batch):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt("killed")
        return real_loss(self, model, batch)

    monkeypatch.setattr(DistillObjective, "loss", dies_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg)
    monkeypatch.setattr(DistillObjective, "loss", real_loss)
    assert not (cfg.model_dir("student") / "model.safetensors").exists()
    out = distill(cfg, resume=True)
    resumed = load_file(out / "model.safetensors")
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=0, msg=name)
    steps = [r["step"] for r in _metrics(out) if "kd" in r]
    assert steps[-2:] == [5, 6]

    cfg.distill.temperature = 1.0  # a different objective may not resume this run
    with pytest.raises(UserError, match="temperature"):
        distill(cfg, resume=True)


def test_missing_teacher_and_tokenizer_mismatch_are_user_errors(prepared_cfg: Config):
    cfg = prepared_cfg
    with pytest.raises(UserError, match="train it first with `babyllama train CONFIG --model t-llama`"):
        distill(cfg)
    _train_teachers(cfg)
    config_path = cfg.model_dir("t-gpt2") / "config.json"
    hf = json.loads(config_path.read_text())
    hf["vocab_size"] += 1
    config_path.write_text(json.dumps(hf))
    with pytest.raises(UserError, match="config.json does not match its checkpoint.json record"):
        distill(cfg)  # an edited file of a model we trained is damage
    (cfg.model_dir("t-gpt2") / "checkpoint.json").unlink()  # a model from elsewhere has no record to check
    config_path.write_text(json.dumps(hf))
    with pytest.raises(UserError, match="teacher 't-gpt2'.*student 'student'.*do not share a tokenizer"):
        distill(cfg)
    hf["vocab_size"] -= 1
    hf["eos_token_id"] = 1
    config_path.write_text(json.dumps(hf))
    with pytest.raises(UserError, match="pad/bos/eos 0/1/1"):
        distill(cfg)
