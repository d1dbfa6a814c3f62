"""`babyllama export`: GGUF read back with the gguf reader, the Hub folder, the model card, refusals."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import yaml
from safetensors.numpy import load_file

from babyllama.cli import main
from conftest import tiny_config_dict, write_text_corpus

FIXTURES = Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny run (teachers, student, control, evaluation, report)."""
    root = tmp_path_factory.mktemp("export-run")
    tree = tiny_config_dict(root / "run", write_text_corpus(root / "corpus"))
    tree["eval"] = {"blimp": str(FIXTURES / "blimp_original")}
    (root / "experiment.yaml").write_text(yaml.safe_dump(tree))
    torch.manual_seed(0)
    assert main(["run", str(root / "experiment.yaml")]) == 0
    return root / "run"


def _export(model_dir: Path, to: Path, *flags: str) -> int:
    return main(["export", str(model_dir), "--to", str(to), *flags])


def _field(reader: gguf.GGUFReader, key: str):
    return reader.fields[key].contents()


def _tensors(reader: gguf.GGUFReader) -> dict[str, np.ndarray]:
    """Every tensor as f32 in numpy (row-major) layout, dequantized where needed."""
    out = {}
    for t in reader.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type) if t.tensor_type not in (
            gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else np.asarray(t.data, dtype=np.float32)
        out[t.name] = data.reshape(tuple(reversed([int(d) for d in t.shape])))
    return out


def _rope(x: np.ndarray, pos: int, interleaved: bool) -> np.ndarray:
    """Rotary embedding of one head vector: HF rotates the halves, llama.cpp (GPT-J style) adjacent pairs."""
    d = x.shape[-1]
    ang = pos / 10000.0 ** (np.arange(0, d, 2) / d)
    cos, sin = np.cos(ang), np.sin(ang)
    a, b = (x[0::2], x[1::2]) if interleaved else (x[: d // 2], x[d // 2:])
    ra, rb = a * cos - b * sin, a * sin + b * cos
    if interleaved:
        return np.stack([ra, rb], axis=-1).reshape(d)
    return np.concatenate([ra, rb])


def _attention_scores(wq: np.ndarray, wk: np.ndarray, n_head: int, interleaved: bool) -> np.ndarray:
    rng = np.random.default_rng(0)
    x_m, x_n = rng.normal(size=wq.shape[1]), rng.normal(size=wq.shape[1])
    q, k = (wq @ x_m).reshape(n_head, -1), (wk @ x_n).reshape(n_head, -1)
    return np.array([_rope(q[h], 5, interleaved) @ _rope(k[h], 2, interleaved) for h in range(n_head)])


@pytest.mark.parametrize("quant", ["f32", "q8_0"])
def test_llama_gguf_reads_back_with_tokenizer_metadata_and_rotary_layout(run_dir: Path, tmp_path: Path, quant) -> None:
    model_dir = run_dir / "models" / "t-llama"
    assert _export(model_dir, tmp_path / "out", "--quant", quant) == 0
    reader = gguf.GGUFReader(tmp_path / "out" / f"t-llama-{quant}.gguf")
    hf = json.loads((model_dir / "config.json").read_text())
    assert _field(reader, "general.architecture") == "llama"
    assert _field(reader, "general.file_type") == {"f32": 0, "q8_0": 7}[quant]
    assert _field(reader, "llama.block_count") == hf["num_hidden_layers"]
    assert _field(reader, "llama.embedding_length") == hf["hidden_size"]
    assert _field(reader, "llama.attention.head_count") == hf["num_attention_heads"]
    assert _field(reader, "llama.rope.dimension_count") == hf["hidden_size"] // hf["num_attention_heads"]
    assert _field(reader, "llama.context_length") == hf["max_position_embeddings"]

    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tokens = _field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == hf["vocab_size"]
    assert all(tokens[i] == t for t, i in tok["model"]["vocab"].items())
    assert [tokens[i] for i in (0, 1, 2)] == ["<pad>", "<s>", "</s>"]
    types = _field(reader, "tokenizer.ggml.token_type")
    assert types[:3] == [gguf.TokenType.CONTROL] * 3 and types[100] == gguf.TokenType.NORMAL
    assert len(_field(reader, "tokenizer.ggml.merges")) == len(tok["model"]["merges"])
    assert _field(reader, "tokenizer.ggml.model") == "gpt2" and _field(reader, "tokenizer.ggml.pre") == "gpt-2"
    assert (_field(reader, "tokenizer.ggml.bos_token_id"), _field(reader, "tokenizer.ggml.eos_token_id"),
            _field(reader, "tokenizer.ggml.padding_token_id")) == (1, 2, 0)

    weights = load_file(str(model_dir / "model.safetensors"))
    got = _tensors(reader)
    assert set(got) == {"token_embd.weight", "output_norm.weight", "output.weight", "blk.0.attn_norm.weight",
                        "blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight", "blk.0.attn_output.weight",
                        "blk.0.ffn_norm.weight", "blk.0.ffn_gate.weight", "blk.0.ffn_up.weight", "blk.0.ffn_down.weight"}
    tol = 0 if quant == "f32" else 0.01
    emb = weights["model.embed_tokens.weight"]
    assert np.abs(got["token_embd.weight"] - emb).max() <= tol * np.abs(emb).max()
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == quant.upper() and kinds["blk.0.attn_norm.weight"] == "F32"
    # The permuted q/k rows under llama.cpp's interleaved rotary give HF's attention scores.
    n_head = hf["num_attention_heads"]
    ours = _attention_scores(got["blk.0.attn_q.weight"], got["blk.0.attn_k.weight"], n_head, interleaved=True)
    theirs = _attention_scores(weights["model.layers.0.self_attn.q_proj.weight"],
                               weights["model.layers.0.self_attn.k_proj.weight"], n_head, interleaved=False)
    np.testing.assert_allclose(ours, theirs, rtol=tol or 1e-5, atol=(tol or 1e-6) * np.abs(theirs).max())


def test_gpt2_gguf_has_transposed_projections_and_uses_tied_embeddings(run_dir: Path, tmp_path: Path) -> None:
    model_dir = run_dir / "models" / "t-gpt2"
    assert _export(model_dir, tmp_path / "out", "--quant", "f16") == 0
    reader = gguf.GGUFReader(tmp_path / "out" / "t-gpt2-f16.gguf")
    assert _field(reader, "general.architecture") == "gpt2"
    assert _field(reader, "gpt2.feed_forward_length") == 4 * 32
    got = _tensors(reader)
    assert "output.weight" not in got and "position_embd.weight" in got  # tied: llama.cpp reuses token_embd
    weights = load_file(str(model_dir / "model.safetensors"))
    np.testing.assert_allclose(got["blk.0.attn_qkv.weight"], weights["transformer.h.0.attn.c_attn.weight"].T, atol=1e-3)
    np.testing.assert_allclose(got["blk.0.ffn_down.weight"], weights["transformer.h.0.mlp.c_proj.weight"].T, atol=1e-3)
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_qkv.weight"] == "F16" and kinds["blk.0.attn_qkv.bias"] == "F32"
    assert kinds["position_embd.weight"] == "F32"


def test_card_states_what_the_run_recorded(run_dir: Path, tmp_path: Path) -> None:
    assert _export(run_dir / "models" / "student", tmp_path / "s", "--quant", "q8_0") == 0
    card = (tmp_path / "s" / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert {"babylm", "distillation", "gguf"} <= set(meta["tags"]) and meta["language"] == ["en"]
    assert meta["license"] == "apache-2.0" and meta["datasets"] == [str(run_dir.parent / "corpus")]
    ppl = json.loads((run_dir / "eval" / "student" / "perplexity.json").read_text())
    blimp = json.loads((run_dir / "eval" / "student" / "blimp.json").read_text())
    results = {r["dataset"]["type"]: r["metrics"] for r in meta["model-index"][0]["results"]}
    assert results["babyllama-dev"][0]["value"] == round(ppl["ce_nats_per_token"], 4)
    assert results["blimp"][0]["value"] == round(100 * blimp["macro_phenomena"], 4)
    assert results["blimp"][0]["args"]["prefix"] == "eos" and results["blimp"][0]["args"]["ties_correct"] is False
    summary = json.loads((run_dir / "models" / "student" / "training_summary.json").read_text())
    assert "distilled student" in body and "`t-llama`" in body and "`t-gpt2`" in body
    assert f"| tokens seen | {summary['tokens_seen']:,} |" in body and "Word-budget ledger" in body
    assert f"{ppl['ce_nats_per_token']:.4f} nats/token" in body and "torch" in body

    assert _export(run_dir / "models" / "student-control", tmp_path / "c", "--format", "hf") == 0
    control = (tmp_path / "c" / "README.md").read_text()
    assert "control: no distillation" in control and "Distilled from" not in control


def test_quants_sit_side_by_side_under_one_gguf_card(run_dir: Path, tmp_path: Path, capsys) -> None:
    src, to = run_dir / "models" / "student", tmp_path / "gguf"
    assert _export(src, to, "--quant", "f16", "--base-model", "me/student") == 0
    first = (to / "student-f16.gguf").read_bytes()
    assert _export(src, to, "--quant", "q8_0", "--base-model", "me/student") == 0
    assert (to / "student-f16.gguf").read_bytes() == first and (to / "student-q8_0.gguf").is_file()
    card = (to / "README.md").read_text()
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    assert meta["library_name"] == "gguf" and meta["base_model"] == "me/student"
    assert meta["base_model_relation"] == "quantized"
    assert "- `student-f16.gguf`" in card and "- `student-q8_0.gguf`" in card
    assert "sampled cache" in card or "run live" in card
    assert "top-None" not in card
    # another model's GGUF in the folder: refused, nothing changed
    capsys.readouterr()
    assert _export(run_dir / "models" / "student-control", to) == 2
    assert "student-f16.gguf" in _one_error_line(capsys) and (to / "student-f16.gguf").read_bytes() == first


def test_hf_folder_is_clean_and_loads_as_trained(run_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = run_dir / "models" / "student"
    assert _export(src, tmp_path / "hub", "--format", "hf") == 0
    names = {p.name for p in (tmp_path / "hub").iterdir()}
    assert names == {"README.md", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                     "tokenizer_config.json"}
    ids = AutoTokenizer.from_pretrained(tmp_path / "hub")("The cat sees the ball.", return_tensors="pt").input_ids
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(tmp_path / "hub")(ids).logits
        b = AutoModelForCausalLM.from_pretrained(src)(ids).logits
    assert torch.equal(a, b)
    # Exporting again over an earlier export replaces it.
    assert _export(src, tmp_path / "hub", "--format", "hf") == 0


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_refusals_are_one_line_with_exit_2(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert _export(run_dir / "data", tmp_path / "x") == 2
    assert "not a model folder" in _one_error_line(capsys)
    assert _export(run_dir / "models" / "student", tmp_path / "x", "--quant", "q4_k") == 2
    assert "--quant 'q4_k'" in _one_error_line(capsys)
    assert _export(run_dir / "models" / "student", tmp_path / "x", "--format", "onnx") == 2
    assert "--format 'onnx'" in _one_error_line(capsys)
    assert _export(run_dir / "models" / "student", tmp_path / "x", "--format", "hf", "--quant", "q8_0") == 2
    _one_error_line(capsys)

    odd = tmp_path / "bert"
    shutil.copytree(run_dir / "models" / "student", odd)
    (odd / "checkpoint.json").unlink()  # edited by hand: no longer the folder babyllama recorded
    cfg = json.loads((odd / "config.json").read_text())
    (odd / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    assert _export(odd, tmp_path / "x") == 2
    assert "model_type 'bert' cannot be exported to GGUF" in _one_error_line(capsys)

    (odd / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForSequenceClassification"]}))
    assert _export(odd, tmp_path / "x") == 2
    assert "LlamaForSequenceClassification cannot be exported to GGUF" in _one_error_line(capsys)

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert _export(run_dir / "models" / "student", busy) == 2
    assert "notes.txt" in _one_error_line(capsys) and (busy / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (pip install 'babyllama[llama-cpp]'), "
                           "so llama.cpp itself does not check the exported GGUF here")
@pytest.mark.parametrize("name", ["t-llama", "t-gpt2", "student"])
def test_llama_cpp_gives_the_hf_log_probs(run_dir: Path, tmp_path: Path, name: str) -> None:
    from babyllama.data.tokens import load_tokens
    from babyllama.evaluate.formats import load_causal_lm
    from babyllama.export.llama_cpp_check import logprob_gap, open_gguf
    from babyllama.runtime import resolve_device

    model_dir = run_dir / "models" / name
    model, _ = load_causal_lm(model_dir, resolve_device("cpu"))
    dev = np.asarray(load_tokens(run_dir / "data", "dev"))
    windows = [dev[i * 16:(i + 1) * 16].tolist() for i in range(4)]
    gaps = {}
    for quant in ("f16", "q8_0"):
        assert _export(model_dir, tmp_path / quant, "--quant", quant) == 0
        llm = open_gguf(tmp_path / quant / f"{name}-{quant}.gguf", n_ctx=32)
        gaps[quant] = logprob_gap(model, llm, windows)
    assert gaps["f16"]["full_vocab_max_abs_nats"] < 1e-2, gaps
    assert gaps["q8_0"]["next_token_max_abs_nats"] < 5e-2, gaps
