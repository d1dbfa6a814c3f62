"""DDP on CPU (gloo): 2 processes x batch B follow the same trajectory as 1 process x batch 2B."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from babyllama.config import Config
from babyllama.train.pretrain import train_model


def variant(cfg: Config, out_dir: Path, **train) -> Config:
    d = cfg.model_dump(mode="json")
    d["out_dir"] = str(out_dir)
    for m in [*d["teachers"], d["student"]]:
        m["train"].update(train)
    new = Config.model_validate(d)
    if not new.data_dir.exists():
        shutil.copytree(cfg.data_dir, new.data_dir)
    return new


def metrics(model_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_match_one(prepared_cfg, tmp_path):
    one = variant(prepared_cfg, tmp_path / "one", batch_size=4, grad_accum=2, max_steps=4, eval_every=2)
    two = variant(prepared_cfg, tmp_path / "two", batch_size=2, grad_accum=2, max_steps=4, eval_every=2)
    cfg_file = tmp_path / "two.yaml"
    cfg_file.write_text(two.to_yaml())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "babyllama", "train", str(cfg_file), "--model", "t-gpt2"]
    child = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert child.returncode == 0, child.stderr[-3000:]
    ref = train_model(one, "t-gpt2")

    got, want = metrics(two.model_dir("t-gpt2")), metrics(ref)
    assert got[0]["world_size"] == 2 and got[0]["global_batch"] == want[0]["global_batch"] == 8
    for key in ("loss", "dev_loss"):
        a, b = [r[key] for r in got if key in r], [r[key] for r in want if key in r]
        assert len(a) == len(b) > 1
        assert a == pytest.approx(b, abs=1e-5)
    wa, wb = load_file(two.model_dir("t-gpt2") / "model.safetensors"), load_file(ref / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    assert json.loads((two.model_dir("t-gpt2") / "training_summary.json").read_text())["world_size"] == 2
