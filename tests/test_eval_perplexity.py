"""Dev perplexity: the CE definition, bits per word, a config's models, mismatched inputs."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from babyllama.cli import main
from babyllama.config import Config
from babyllama.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from babyllama.data.tokens import load_tokens, read_manifest
from babyllama.errors import UserError
from babyllama.evaluate.perplexity import evaluate_perplexity, format_perplexity_table, perplexity_for_config
from babyllama.models import build_model
from fixtures.eval.tiny_models import make_model_dir, one_torch_thread  # noqa: F401 (autouse fixture)


def save_trained_stand_in(cfg: Config, name: str, seed: int) -> Path:
    """A randomly initialised model of ``name`` saved where training would put it, with the data's tokenizer."""
    torch.manual_seed(seed)
    vocab = read_manifest(cfg.data_dir)["vocab_size"]
    model = build_model(cfg.model(name), vocab, {"pad": PAD_ID, "bos": BOS_ID, "eos": EOS_ID})
    folder = cfg.model_dir(name)
    model.save_pretrained(folder)
    for f in (cfg.data_dir / "tokenizer").iterdir():
        shutil.copy(f, folder / f.name)
    return folder


def manual_ce(folder: Path, tokens: np.ndarray, seq_len: int) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    n = len(tokens) // seq_len
    x = torch.tensor(np.asarray(tokens[: n * seq_len], dtype=np.int64).reshape(n, seq_len))
    with torch.no_grad():
        logits = model(x).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)).item()


def test_perplexity_of_a_config(prepared_cfg, capsys):
    cfg = prepared_cfg
    folder = save_trained_stand_in(cfg, "t-llama", seed=3)
    save_trained_stand_in(cfg, "t-gpt2", seed=4)
    results = perplexity_for_config(cfg, device="cpu")
    assert set(results) == {"t-llama", "t-gpt2"}
    assert "skipped: student" in capsys.readouterr().out  # the student and the control are not trained

    r = results["t-llama"]
    tokens = load_tokens(cfg.data_dir, "dev")
    dev = read_manifest(cfg.data_dir)["splits"]["dev"]
    seq = cfg.data.seq_len
    assert r["windows"] == len(tokens) // seq and r["tokens_scored"] == r["windows"] * (seq - 1)
    assert r["ce_nats_per_token"] == pytest.approx(manual_ce(folder, tokens, seq), rel=1e-5)
    assert r["perplexity"] == pytest.approx(math.exp(r["ce_nats_per_token"]))
    assert r["bits_per_word"] == pytest.approx(r["ce_nats_per_token"] * dev["tokens"] / dev["words"] / math.log(2))
    assert r["dev_words"] == dev["words"] > 0
    # A random model knows nothing: its CE is close to log(vocab).
    assert abs(r["ce_nats_per_token"] - math.log(read_manifest(cfg.data_dir)["vocab_size"])) < 1.0

    capped = evaluate_perplexity(folder, cfg.data_dir, seq_len=seq, device="cpu", max_windows=2, batch_size=1)
    assert capped["windows"] == 2
    table = format_perplexity_table(results)
    assert table.count("\n") == 3 and "| t-gpt2 |" in table

    yaml_path = cfg.out / "experiment.yaml"  # `babyllama evaluate perplexity CONFIG`
    yaml_path.write_text(cfg.to_yaml())
    assert main(["evaluate", "perplexity", str(yaml_path), "--device", "cpu", "--out", str(cfg.out / "ppl.json")]) == 0
    saved = json.loads((cfg.out / "ppl.json").read_text())
    assert saved["t-llama"]["ce_nats_per_token"] == pytest.approx(r["ce_nats_per_token"], rel=1e-6)


def test_perplexity_cli_and_bad_inputs(prepared_cfg, tmp_path, capsys):
    cfg = prepared_cfg
    folder = save_trained_stand_in(cfg, "student", seed=5)
    out = tmp_path / "ppl.json"
    assert main(["evaluate", "perplexity", "--model", str(folder), "--data-dir", str(cfg.data_dir),
                 "--seq-len", str(cfg.data.seq_len), "--device", "cpu", "--out", str(out)]) == 0
    assert json.loads(out.read_text())["student"]["seq_len"] == cfg.data.seq_len

    other = make_model_dir(tmp_path / "other", "llama", n_positions=64)  # trained on other text: read per word
    own = evaluate_perplexity(other, cfg.data_dir, seq_len=16, device="cpu")
    assert own["tokenizer"] == "own" and "perplexity" not in own and own["bits_per_word"] > 0
    small = tmp_path / "small"
    LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                 num_attention_heads=1, max_position_embeddings=32)).save_pretrained(small)
    with pytest.raises(UserError, match="100 token embeddings"):
        evaluate_perplexity(small, cfg.data_dir, seq_len=16, device="cpu")
    bare = tmp_path / "bare"  # no tokenizer files: refused unless asked for, then checked by vocabulary size only
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                 num_attention_heads=1, max_position_embeddings=32)).save_pretrained(bare)
    with pytest.raises(UserError, match="has no tokenizer to compare"):
        evaluate_perplexity(bare, cfg.data_dir, seq_len=16, device="cpu")
    assert evaluate_perplexity(bare, cfg.data_dir, seq_len=16, device="cpu",
                               allow_unchecked_tokenizer=True)["tokenizer_checked"] is False
    with pytest.raises(UserError, match="exceeds the model's 32 positions"):
        evaluate_perplexity(folder, cfg.data_dir, seq_len=64, device="cpu")
    with pytest.raises(UserError, match="not prepared"):
        evaluate_perplexity(folder, tmp_path, seq_len=16, device="cpu")
    assert main(["evaluate", "perplexity", "--model", str(tmp_path / "nothing"), "--data-dir",
                 str(cfg.data_dir)]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_a_different_tokenizer_reads_the_dev_text_itself(prepared_cfg, tmp_path):
    cfg = prepared_cfg
    folder = save_trained_stand_in(cfg, "student", seed=5)
    same = evaluate_perplexity(folder, cfg.data_dir, seq_len=16, device="cpu")
    vocab = json.loads((folder / "tokenizer.json").read_text())
    v = vocab["model"]["vocab"]
    a, b = list(v)[300 - 2], list(v)[300 - 1]
    v[a], v[b] = v[b], v[a]  # same size, two ids swapped
    (folder / "tokenizer.json").write_text(json.dumps(vocab))
    own = evaluate_perplexity(folder, cfg.data_dir, seq_len=16, device="cpu")  # not dev.bin's ids: the text again
    assert own["tokenizer"] == "own" and "ce_nats_per_token" not in own and own["own_dev_tokens"] == same["dev_tokens"]
    assert own["bits_per_word"] != same["bits_per_word"]  # the two swapped ids mean other text to it


def test_no_trained_model(prepared_cfg):
    with pytest.raises(UserError, match="no trained model"):
        perplexity_for_config(prepared_cfg, device="cpu")


def test_the_command_as_a_user_runs_it_shows_and_writes_everything(prepared_cfg, tmp_path):
    """`python -m babyllama` ends without the interpreter's teardown (babyllama.fast_exit): its whole output is
    still shown and its file written."""
    cfg = prepared_cfg
    folder = save_trained_stand_in(cfg, "student", seed=5)
    out = tmp_path / "ppl.json"
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    args = [sys.executable, "-m", "babyllama", "evaluate", "perplexity", "--model", str(folder), "--data-dir",
            str(cfg.data_dir), "--seq-len", str(cfg.data.seq_len), "--threads", "1", "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()  # the table, then the file it wrote: nothing lost when the process ended
    assert lines[-1] == f"wrote {out}" and any(line.startswith("| student | ") for line in lines)
    expected = evaluate_perplexity(folder, cfg.data_dir, seq_len=cfg.data.seq_len, device="cpu")
    assert json.loads(out.read_text())["student"]["ce_nats_per_token"] == pytest.approx(expected["ce_nats_per_token"])
