"""Exact resume: a run SIGKILLed after (or during) a checkpoint save and resumed ends bitwise identical
to an uninterrupted run; corrupted checkpoints and changed configs/data are refused."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from babyllama.config import Config
from babyllama.errors import UserError
from babyllama.training import train_model
from helpers import variant

# Runs in a child process: train t-llama and SIGKILL itself in the middle of writing the step-KILL_STEP
# checkpoint (its files written, no manifest, no rename yet). The previous checkpoint must survive intact.
KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from babyllama.config import Config
    from babyllama.train import checkpoint as ckpt
    from babyllama.train.loop import fit
    from babyllama.train.objective import LMObjective

    cfg = Config.model_validate_json(open(sys.argv[1]).read())
    kill_step = int(sys.argv[2])
    real_manifest = ckpt._write_manifest

    def torn(folder, info):
        if info.get("step") == kill_step and (folder / ckpt.STATE_FILE).exists():
            os.kill(os.getpid(), signal.SIGKILL)
        real_manifest(folder, info)

    ckpt._write_manifest = torn
    fit(cfg, cfg.model("t-llama"), LMObjective())
    """
)


def resumable(cfg: Config, out_dir: Path) -> Config:
    """Dropout on (so the torch RNG matters), random windows, accumulation, a checkpoint every 2 steps."""
    new = variant(cfg, out_dir, max_steps=8, save_every=2, grad_accum=2, batch_size=2)
    new.teachers[0].dropout = 0.1
    return new


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def losses(model_dir: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (model_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_killed_run_resumes_bitwise(prepared_cfg, tmp_path):
    ref = train_model(resumable(prepared_cfg, tmp_path / "ref"), "t-llama")

    cfg = resumable(prepared_cfg, tmp_path / "killed")
    cfg_file = tmp_path / "killed.json"
    cfg_file.write_text(cfg.model_dump_json())
    child = subprocess.run([sys.executable, "-c", KILLER, str(cfg_file), "6"], capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())})
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    ck = cfg.checkpoint_dir("t-llama")
    assert json.loads((ck / "last" / "checkpoint.json").read_text())["step"] == 4  # the torn step-6 save left it
    assert list(ck.glob(".last.*.tmp")) and not cfg.model_dir("t-llama").exists()

    out = train_model(cfg, "t-llama", resume=True)
    want, got = weights(ref), weights(out)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) for k in got)
    assert losses(out) == losses(ref)  # metrics.jsonl reads like the uninterrupted run
    assert not list(ck.glob(".*.tmp"))  # the torn temporary folder was cleaned up


def test_refusals_and_recovery(prepared_cfg, tmp_path):
    cfg = variant(prepared_cfg, tmp_path / "r", max_steps=3)
    with pytest.raises(UserError, match="nothing to resume"):
        train_model(cfg, "t-llama", resume=True)
    out = train_model(cfg, "t-llama")
    first = weights(out)
    last = cfg.checkpoint_dir("t-llama") / "last"

    changed = variant(cfg, cfg.out, lr=1e-2, max_steps=3)
    with pytest.raises(UserError, match=r"config changed \(train.lr: 0.003 -> 0.01\)"):
        train_model(changed, "t-llama")

    manifest_path = cfg.data_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**manifest, "data_hash": "0" * 64}))
    with pytest.raises(UserError, match="prepared data changed"):
        train_model(cfg, "t-llama")
    manifest_path.write_text(json.dumps(manifest))

    # a kill between atomic_path's two renames parks the previous folder as .last.old: still resumable
    shutil.rmtree(cfg.model_dir("t-llama"))
    os.replace(last, last.with_name(".last.old"))
    assert all(torch.equal(v, first[k]) for k, v in weights(train_model(cfg, "t-llama")).items())

    assert last.is_dir() and not last.with_name(".last.old").exists()  # moved back into place
    blob = bytearray((last / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (last / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(UserError, match="corrupted: model.safetensors"):
        train_model(cfg, "t-llama")
    state = last / "training_state.pt"
    state.write_bytes(state.read_bytes()[:100])
    with pytest.raises(UserError, match="checkpoint .* (corrupted|incomplete)"):
        train_model(cfg, "t-llama")


def test_fp16_scaler_state_is_kept_and_old_checkpoints_without_it_resume(prepared_cfg, tmp_path, monkeypatch):
    """The GradScaler always exists: enabled under fp16 its state is checkpointed; a checkpoint written
    before that (no scaler state) still resumes, starting the scaler afresh."""
    from babyllama.train import checkpoint as ckpt
    from babyllama.train import loop

    cfg = variant(prepared_cfg, tmp_path / "fp16", precision="fp16", max_steps=4, save_every=2)
    real = loop.save_at_words

    def stop_after_two(run, model, done):
        if done == 3:
            raise KeyboardInterrupt  # the step-2 checkpoint is on disk, nothing published
        real(run, model, done)

    monkeypatch.setattr(loop, "save_at_words", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        train_model(cfg, "t-llama")
    monkeypatch.undo()
    last = cfg.checkpoint_dir("t-llama") / "last"
    state = ckpt.TrainingState.read(last)
    assert state.step == 2 and "scale" in state.scaler
    state.scaler = {}  # as an older babyllama wrote it
    torch.save(state.as_dict(), last / ckpt.STATE_FILE)
    manifest = json.loads((last / ckpt.MANIFEST_FILE).read_text())
    ckpt._write_manifest(last, {k: v for k, v in manifest.items() if k != "files"})

    out = train_model(cfg, "t-llama", resume=True)
    assert json.loads((out / "training_summary.json").read_text())["steps"] == 4
    assert all(torch.isfinite(t.float()).all() for t in weights(out).values())
