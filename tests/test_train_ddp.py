"""DDP on CPU (gloo): 2 processes x batch B follow the same trajectory as 1 process x batch 2B."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from babyllama.training import train_model
from helpers import read_metrics, variant


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

    got, want = read_metrics(two.model_dir("t-gpt2")), read_metrics(ref)
    assert got[0]["world_size"] == 2 and got[0]["global_batch"] == want[0]["global_batch"] == 8
    for key in ("loss", "dev_loss"):
        a, b = [r[key] for r in got if key in r], [r[key] for r in want if key in r]
        assert len(a) == len(b) > 1
        assert a == pytest.approx(b, abs=1e-5)
    wa, wb = load_file(two.model_dir("t-gpt2") / "model.safetensors"), load_file(ref / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    assert json.loads((two.model_dir("t-gpt2") / "training_summary.json").read_text())["world_size"] == 2
