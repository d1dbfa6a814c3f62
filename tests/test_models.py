"""Model construction: the paper's presets have exactly the paper's sizes; every ModelConfig key lands in HF."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2LMHeadModel, LlamaForCausalLM

from babyllama.config import ModelConfig, load_config
from babyllama.errors import UserError
from babyllama.models import build_model, count_parameters

PRESET = Path(__file__).resolve().parents[1] / "configs" / "babylm-2023-strict-small.yaml"
SPECIAL = {"pad": 0, "bos": 1, "eos": 2}


def test_presets_have_the_paper_parameter_counts():
    cfg = load_config(PRESET)
    expected = {"gpt2-705m": 704_928_768, "llama-360m": 359_973_888, "baby-llama-58m": 58_343_936}
    counts = {}
    for m in cfg.models():
        with torch.device("meta"):  # shapes only, no memory
            counts[m.name] = count_parameters(build_model(m, 16000, SPECIAL))
    assert {k: counts[k] for k in expected} == expected
    assert counts[cfg.control_name] == expected["baby-llama-58m"]


def tiny(**kw) -> ModelConfig:
    base = {"name": "m", "arch": "llama", "hidden_size": 32, "num_layers": 2, "num_heads": 4, "max_position_embeddings": 64}
    return ModelConfig(**{**base, **kw})


def test_llama_keys_reach_the_hf_config():
    m = build_model(tiny(num_kv_heads=2, dropout=0.1, rms_norm_eps=1e-5, rope_theta=500.0, initializer_range=0.01), 300, SPECIAL)
    assert isinstance(m, LlamaForCausalLM)
    c = m.config
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (300, 32, 2, 4, 2)
    assert c.intermediate_size == 4 * 32  # null -> 4 x hidden
    assert (c.attention_dropout, c.rms_norm_eps, c.rope_parameters["rope_theta"], c.initializer_range) == (0.1, 1e-5, 500.0, 0.01)
    assert (c.pad_token_id, c.bos_token_id, c.eos_token_id) == (0, 1, 2)
    assert c.tie_word_embeddings is False and m.lm_head.weight is not m.model.embed_tokens.weight
    assert c._attn_implementation == "sdpa"
    assert all(p.dtype == torch.float32 for p in m.parameters())


def test_gpt2_keys_reach_the_hf_config():
    m = build_model(tiny(arch="gpt2", intermediate_size=40, dropout=0.2, max_position_embeddings=48), 300, SPECIAL)
    assert isinstance(m, GPT2LMHeadModel)
    c = m.config
    assert (c.vocab_size, c.n_embd, c.n_layer, c.n_head, c.n_inner, c.n_positions) == (300, 32, 2, 4, 40, 48)
    assert (c.resid_pdrop, c.embd_pdrop, c.attn_pdrop) == (0.2, 0.2, 0.2)
    assert (c.pad_token_id, c.bos_token_id, c.eos_token_id) == (0, 1, 2)  # not GPT-2's 50256
    assert m.lm_head.weight is m.transformer.wte.weight  # GPT-2 ties by default
    assert count_parameters(m) == sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())
    untied = build_model(tiny(arch="gpt2", tie_embeddings=False), 300, SPECIAL)
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert count_parameters(untied) == count_parameters(build_model(tiny(arch="gpt2"), 300, SPECIAL)) + 300 * 32


def test_same_seed_same_model():
    torch.manual_seed(3)
    a = build_model(tiny(), 300, SPECIAL)
    torch.manual_seed(3)
    b = build_model(tiny(), 300, SPECIAL)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_gpt2_refuses_kv_heads():
    with pytest.raises(UserError, match="num_kv_heads"):
        build_model(tiny(arch="gpt2", num_kv_heads=2), 300, SPECIAL)
