"""The training loop end to end on the tiny prepared corpus: outputs, metrics, windows, objectives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from babyllama.cli import main as cli_main
from babyllama.data.tokens import load_tokens
from babyllama.data.windows import dev_subset, gather_windows, num_fixed_windows, window_starts
from babyllama.errors import UserError
from babyllama.identity import is_trained as is_complete
from babyllama.train.loop import fit
from babyllama.train.objective import Batch, LMObjective
from babyllama.train.plan import WindowStream
from babyllama.training import train_model
from helpers import read_metrics, variant


def test_train_model_writes_a_plain_hf_model(prepared_cfg):
    cfg = prepared_cfg
    out = train_model(cfg, "t-gpt2")
    assert out == cfg.model_dir("t-gpt2")
    model = AutoModelForCausalLM.from_pretrained(out)  # no project code involved
    tok = AutoTokenizer.from_pretrained(out)
    assert model.config.model_type == "gpt2" and model.config.vocab_size == len(tok) == 300
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (1, 2, 0)

    lines = read_metrics(out)
    train_lines = [r for r in lines if "loss" in r]
    assert [r["step"] for r in train_lines] == [1, 2, 3, 4, 5, 6]  # log_every 1, max_steps 6
    for key in ("epoch", "lr", "grad_norm", "tokens_per_s", "tokens_seen", "words_seen", "ce"):
        assert key in train_lines[0]
    assert train_lines[-1]["tokens_seen"] == 6 * 4 * 16
    assert train_lines[-1]["lr"] == 0.0  # cosine decays to 0 at the last step
    assert train_lines[-1]["loss"] < train_lines[0]["loss"]
    dev_lines = [r for r in lines if "dev_loss" in r]
    assert [r["step"] for r in dev_lines] == [6]

    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 6 and summary["tokens_seen"] == 384 and summary["best_dev_loss"] == dev_lines[0]["dev_loss"]
    manifest = json.loads((cfg.data_dir / "manifest.json").read_text())
    assert summary["data_hash"] == manifest["data_hash"]
    words, tokens = manifest["splits"]["train"]["words"], manifest["splits"]["train"]["tokens"]
    assert summary["words_seen"] == pytest.approx(384 * words / tokens)
    assert is_complete(cfg, cfg.model("t-gpt2"), LMObjective().fingerprint())
    assert not is_complete(cfg, cfg.model("t-llama"), LMObjective().fingerprint())
    changed = variant(cfg, cfg.out, lr=1e-3)
    assert not is_complete(changed, changed.model("t-gpt2"), LMObjective().fingerprint())

    # the final model is the best checkpoint, and a second call reuses the finished state
    best = load_file(cfg.checkpoint_dir("t-gpt2") / "best" / "model.safetensors")
    final = load_file(out / "model.safetensors")
    assert all(torch.equal(best[k], final[k]) for k in best)
    assert train_model(cfg, "t-gpt2") == out
    assert load_file(out / "model.safetensors").keys() == final.keys()


def test_student_is_refused_and_control_alias_works(prepared_cfg, tmp_path):
    with pytest.raises(UserError, match="babyllama distill"):
        train_model(prepared_cfg, "student")
    path = tmp_path / "cfg.yaml"
    path.write_text(prepared_cfg.to_yaml())
    assert cli_main(["train", str(path), "--model", "student"]) == 2
    assert cli_main(["train", str(path), "--model", "control", "--set", "student.train.max_steps=2"]) == 0
    assert json.loads((prepared_cfg.model_dir("student-control") / "training_summary.json").read_text())["steps"] == 2


def test_window_stream_epochs_and_modes():
    fixed = WindowStream(n_tokens=16 * 10 + 5, seq_len=16, seed=1, mode="fixed")
    assert fixed.n_windows == 10
    starts, ids = fixed.take(0, 25)  # two and a half epochs straddling the boundaries
    assert sorted(ids[:10].tolist()) == list(range(10)) and sorted(ids[10:20].tolist()) == list(range(10))
    assert ids[:10].tolist() != ids[10:20].tolist()  # reshuffled per epoch
    assert np.array_equal(starts, ids * 16)
    s2, i2 = fixed.take(7, 9)  # any slice of the stream is the same samples: resume needs only the step
    assert np.array_equal(s2, starts[7:16]) and np.array_equal(i2, ids[7:16])

    rand = WindowStream(n_tokens=16 * 10 + 5, seq_len=16, seed=1, mode="random")
    assert rand.n_windows == 9  # one fewer, so a shifted window stays in range
    starts, ids = rand.take(0, 18)
    assert (ids == -1).all()
    offsets = starts % 16
    assert offsets.min() >= 0 and starts.max() + 16 <= 16 * 10 + 5
    assert len(set(offsets.tolist())) > 3  # fresh offsets, not one shift
    assert sorted((starts[:9] // 16).tolist()) == list(range(9))
    again, _ = WindowStream(16 * 10 + 5, 16, 1, "random").take(0, 18)
    assert np.array_equal(starts, again)


class DoubledCE(LMObjective):
    """A non-CE objective (2 x CE) that records the batches it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.batches: list[Batch] = []

    def loss(self, model, batch):
        self.batches.append(batch)
        loss, extras = super().loss(model, batch)
        return 2 * loss, {**extras, "const": 0.5}

    def fingerprint(self) -> dict:
        return {"objective": "doubled"}


def test_custom_objective_fixed_windows_and_dev_ce(prepared_cfg):
    cfg = prepared_cfg
    obj = DoubledCE()
    out = fit(cfg, cfg.model("t-llama"), obj, windows="fixed", description="probe")
    train = load_tokens(cfg.data_dir, "train")
    for b in obj.batches:
        assert b.input_ids.shape == (4, 16) and (b.window_ids >= 0).all()
        expect = gather_windows(train, window_starts(b.window_ids.numpy(), 16), 16)
        assert np.array_equal(b.input_ids.numpy(), expect)
    lines = [r for r in read_metrics(out) if "loss" in r]
    assert all(r["loss"] == pytest.approx(2 * r["ce"], rel=1e-6) and r["const"] == 0.5 for r in lines)

    # dev loss is plain CE of the model on the seeded dev subset, whatever the objective
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["windows"] == "fixed" and summary["objective"] == {"objective": "doubled"}
    dev = load_tokens(cfg.data_dir, "dev")
    idx = dev_subset(num_fixed_windows(len(dev), 16), cfg.model("t-llama").train.eval_windows, cfg.seed)
    x = torch.from_numpy(gather_windows(dev, window_starts(idx, 16), 16))
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        ce = model(input_ids=x, labels=x).loss.item()
    assert summary["final_dev_loss"] == pytest.approx(ce, abs=1e-5)
    assert not is_complete(cfg, cfg.model("t-llama"), obj.fingerprint())  # the 'fixed' override is part of the run
    assert is_complete(cfg, cfg.model("t-llama"), obj.fingerprint(), windows="fixed")


def test_grad_accumulation_matches_a_bigger_batch(prepared_cfg, tmp_path):
    a = variant(prepared_cfg, tmp_path / "a", batch_size=4, grad_accum=1)
    b = variant(prepared_cfg, tmp_path / "b", batch_size=2, grad_accum=2)
    wa = load_file(train_model(a, "t-llama") / "model.safetensors")
    wb = load_file(train_model(b, "t-llama") / "model.safetensors")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)
    la = [r["loss"] for r in read_metrics(a.model_dir("t-llama")) if "loss" in r]
    lb = [r["loss"] for r in read_metrics(b.model_dir("t-llama")) if "loss" in r]
    assert la == pytest.approx(lb, abs=1e-5)


def test_epoch_budget_and_epoch_end_evaluation(prepared_cfg, tmp_path):
    cfg = variant(prepared_cfg, tmp_path / "e", batch_size=64, epochs=2, max_steps=None, log_every=100)
    out = train_model(cfg, "t-llama")
    n = len(load_tokens(cfg.data_dir, "train")) // 16 - 1  # random-offset windows
    steps = 2 * n // 64
    ends = sorted({s for s in range(1, steps + 1) if s * 64 // n > (s - 1) * 64 // n} | {steps})
    lines = read_metrics(out)
    assert [r["step"] for r in lines if "dev_loss" in r] == ends
    assert [r["step"] for r in lines if "loss" in r] == [steps]
    assert json.loads((out / "training_summary.json").read_text())["steps"] == steps


def test_missing_tracker_is_a_user_error(prepared_cfg):
    cfg = prepared_cfg.model_copy(deep=True)
    cfg.logging.tensorboard = True
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="tensorboard"):
            train_model(cfg, "t-llama")
    else:
        train_model(cfg, "t-llama")
        assert list((cfg.checkpoint_dir("t-llama") / "tensorboard").glob("events.*"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_on_cpu(prepared_cfg, tmp_path, precision):
    cfg = variant(prepared_cfg, tmp_path / precision, precision=precision, max_steps=3)
    lines = read_metrics(train_model(cfg, "t-llama"))
    assert lines[0]["precision"] == f"torch.{'bfloat16' if precision == 'bf16' else 'float16'}"
    assert all(np.isfinite(r["loss"]) for r in lines if "loss" in r)
    assert np.isfinite(lines[-1]["dev_loss"])
