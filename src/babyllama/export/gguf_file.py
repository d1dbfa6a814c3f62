"""Write a babyllama model as one GGUF file for llama.cpp, with the `gguf` package (the GGML project's writer).

Facts carried over from llama.cpp's own converter (convert_hf_to_gguf.py), not its code:

- tensor names come from ``gguf.TensorNameMap`` (HF name -> ``blk.N.attn_q.weight`` ...);
- LLaMA: llama.cpp applies rotary embeddings to interleaved pairs (GPT-J style) while HF rotates the two
  halves of each head, so the rows of q_proj / k_proj are permuted per head: (heads, 2, d/2, in) ->
  (heads, d/2, 2, in);
- GPT-2: HF stores its projections as ``Conv1D`` (in, out): they are transposed to (out, in);
- tied output embeddings are left out: llama.cpp reuses ``token_embd`` when ``output`` is absent;
- 1-D tensors (norms, biases) and the position table stay f32; q8_0 needs rows that are a multiple of 32
  values, other rows fall back to f16;
- tokenizer: ``tokenizer.ggml.model = gpt2`` (byte-level BPE) with pre-tokenizer ``gpt-2`` (the GPT-2
  split regex, which is what tokenizers' ByteLevel pre-tokenizer uses), tokens in id order, merges, special ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.torch import load_file

from babyllama.errors import UserError
from babyllama.export.record import ModelRecord

QUANTS = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
ARCHS = {"llama": gguf.MODEL_ARCH.LLAMA, "gpt2": gguf.MODEL_ARCH.GPT2}
CAUSAL_LM = {"llama": "LlamaForCausalLM", "gpt2": "GPT2LMHeadModel"}
GPT2_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # ggml's gelu is the tanh approximation


def rotary_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF half-split rotary layout -> llama.cpp's interleaved layout, for q_proj / k_proj rows."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_exportable(rec: ModelRecord) -> None:
    """Refuse, with one line, a model llama.cpp could not run as trained."""
    c = rec.hf_config
    where = rec.model_dir / "config.json"
    if rec.arch not in ARCHS:
        raise UserError(f"{where}: model_type '{rec.arch}' cannot be exported to GGUF (supported: {', '.join(ARCHS)})")
    head = (c.get("architectures") or [CAUSAL_LM[rec.arch]])[0]
    if head != CAUSAL_LM[rec.arch]:
        raise UserError(f"{where}: {head} cannot be exported to GGUF (only the causal LM {CAUSAL_LM[rec.arch]})")
    if rec.arch == "llama":
        rope = c.get("rope_parameters") or {"rope_type": (c.get("rope_scaling") or {}).get("rope_type", "default")}
        problems = {"hidden_act": (c.get("hidden_act"), "silu"), "rope_type": (rope.get("rope_type"), "default"),
                    "attention_bias": (c.get("attention_bias", False), False), "mlp_bias": (c.get("mlp_bias", False), False)}
    else:
        problems = {"activation_function": (c.get("activation_function"), TANH_GELU),
                    "scale_attn_by_inverse_layer_idx": (c.get("scale_attn_by_inverse_layer_idx", False), False)}
    for key, (value, wanted) in problems.items():
        ok = value in wanted if isinstance(wanted, tuple) else value == wanted
        if not ok:
            raise UserError(f"{where}: {key} = {value!r} is not supported by llama.cpp's {rec.arch} (expected {wanted!r})")


def _hparams(w: gguf.GGUFWriter, rec: ModelRecord, file_type: gguf.LlamaFileType) -> None:
    c = rec.hf_config
    w.add_name(rec.name)
    w.add_file_type(file_type)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_vocab_size(c["vocab_size"])
    if rec.arch == "llama":
        n_head = c["num_attention_heads"]
        head_dim = c.get("head_dim") or c["hidden_size"] // n_head
        rope = c.get("rope_parameters") or {}
        w.add_context_length(c["max_position_embeddings"])
        w.add_embedding_length(c["hidden_size"])
        w.add_block_count(c["num_hidden_layers"])
        w.add_feed_forward_length(c["intermediate_size"])
        w.add_head_count(n_head)
        w.add_head_count_kv(c.get("num_key_value_heads") or n_head)
        w.add_rope_dimension_count(head_dim)
        w.add_rope_freq_base(float(rope.get("rope_theta", c.get("rope_theta", 10000.0))))
        w.add_layer_norm_rms_eps(c["rms_norm_eps"])
        if head_dim != c["hidden_size"] // n_head:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
    else:
        w.add_context_length(c["n_positions"])
        w.add_embedding_length(c["n_embd"])
        w.add_block_count(c["n_layer"])
        w.add_feed_forward_length(c.get("n_inner") or 4 * c["n_embd"])
        w.add_head_count(c["n_head"])
        w.add_layer_norm_eps(c["layer_norm_epsilon"])


def _tokenizer(w: gguf.GGUFWriter, rec: ModelRecord) -> None:
    path = rec.model_dir / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{rec.model_dir}: no tokenizer.json (a babyllama model folder carries its tokenizer)")
    tj = json.loads(path.read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    if model.get("type") != "BPE" or (tj.get("decoder") or {}).get("type") != "ByteLevel":
        raise UserError(f"{path}: only byte-level BPE tokenizers can be written to GGUF")
    vocab: dict[str, int] = dict(model["vocab"])
    special = {t["content"] for t in tj.get("added_tokens", []) if t.get("special")}
    for t in tj.get("added_tokens", []):
        vocab.setdefault(t["content"], t["id"])
    n_vocab = rec.hf_config["vocab_size"]
    by_id = {i: tok for tok, i in vocab.items()}
    if max(by_id) >= n_vocab:
        raise UserError(f"{path}: token id {max(by_id)} does not fit the model's vocab_size {n_vocab}")
    tokens, types = [], []
    for i in range(n_vocab):  # ids the tokenizer never produces (embedding padding) become unused placeholders
        tok = by_id.get(i)
        tokens.append(tok if tok is not None else f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED if tok is None else
                     gguf.TokenType.CONTROL if tok in special else gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    specials = gguf.SpecialVocab(rec.model_dir, load_merges=True, n_vocab=n_vocab)
    specials.add_to_gguf(w, quiet=True)


def _tensors(rec: ModelRecord) -> dict[str, np.ndarray]:
    """HF tensors, renamed to GGUF names and laid out as llama.cpp expects (numpy row-major, f32)."""
    c = rec.hf_config
    n_layers = c.get("num_hidden_layers") or c.get("n_layer")
    names = gguf.TensorNameMap(ARCHS[rec.arch], n_layers)
    tied = c.get("tie_word_embeddings", rec.arch == "gpt2")
    out: dict[str, np.ndarray] = {}
    for f in rec.weight_files:
        for name, t in load_file(str(f)).items():
            if name.endswith((".attn.bias", ".attn.masked_bias")) or ("rotary_emb" in name):
                continue  # buffers, not weights
            data = t.float().numpy()
            if rec.arch == "gpt2" and name.endswith(GPT2_CONV1D):
                data = np.ascontiguousarray(data.T)
            elif rec.arch == "llama" and name.endswith("q_proj.weight"):
                data = rotary_permute(data, c["num_attention_heads"])
            elif rec.arch == "llama" and name.endswith("k_proj.weight"):
                data = rotary_permute(data, c.get("num_key_value_heads") or c["num_attention_heads"])
            new = names.get_name(name, try_suffixes=(".weight", ".bias"))
            if new is None:
                raise UserError(f"{f}: tensor '{name}' has no llama.cpp {rec.arch} counterpart")
            out[new] = data
    if tied:
        out.pop("output.weight", None)
    return out


def _encode(name: str, data: np.ndarray, qtype: gguf.GGMLQuantizationType) -> tuple[np.ndarray, gguf.GGMLQuantizationType]:
    if data.ndim <= 1 or name.startswith("position_embd"):
        return data, gguf.GGMLQuantizationType.F32
    if qtype == gguf.GGMLQuantizationType.Q8_0:
        try:
            return gguf.quants.quantize(data, qtype), qtype
        except gguf.QuantError:  # rows not a multiple of the 32-value block
            qtype = gguf.GGMLQuantizationType.F16
    if qtype == gguf.GGMLQuantizationType.F16:
        return data.astype(np.float16), qtype
    return data, gguf.GGMLQuantizationType.F32


def write_gguf(rec: ModelRecord, path: Path, quant: str, metadata: dict[str, Any]) -> dict[str, int]:
    """Write ``path``; return how many tensors went out in each type (e.g. {"Q8_0": 7, "F32": 3})."""
    check_exportable(rec)
    qtype, file_type = QUANTS[quant]
    w = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[ARCHS[rec.arch]])
    _hparams(w, rec, file_type)
    for key, value in metadata.items():
        getattr(w, f"add_{key}")(value)
    _tokenizer(w, rec)
    counts: dict[str, int] = {}
    for name, data in _tensors(rec).items():
        encoded, used = _encode(name, data, qtype)
        w.add_tensor(name, encoded, raw_dtype=used)
        counts[used.name] = counts.get(used.name, 0) + 1
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return counts
