"""Model construction: Hugging Face GPT-2 / LLaMA classes, randomly initialised from a ModelConfig.

We build the stock `GPT2LMHeadModel` / `LlamaForCausalLM` so every saved model loads with plain
`AutoModelForCausalLM.from_pretrained`, no project code. Vocabulary size and special-token ids come
from the prepared tokenizer (never GPT-2's 50256, which lies outside a 16k vocabulary).
"""

from __future__ import annotations

import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)

from babyllama.config import ModelConfig
from babyllama.errors import UserError


def hf_config(model_cfg: ModelConfig, vocab_size: int, special_ids: dict[str, int | None]) -> PretrainedConfig:
    """The HF config for ``model_cfg``. ``special_ids`` holds "bos", "eos" and "pad" token ids (or None)."""
    m = model_cfg
    ids = {f"{k}_token_id": special_ids.get(k) for k in ("bos", "eos", "pad")}
    tied = {} if m.tie_embeddings is None else {"tie_word_embeddings": m.tie_embeddings}
    if m.arch == "gpt2":
        if m.num_kv_heads not in (None, m.num_heads):
            raise UserError(f"model {m.name!r}: num_kv_heads is a LLaMA option (GPT-2 has no grouped-query attention); set it to null")
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=m.max_position_embeddings,
            n_embd=m.hidden_size,
            n_layer=m.num_layers,
            n_head=m.num_heads,
            n_inner=m.intermediate_size,  # None -> 4 x hidden inside GPT-2
            resid_pdrop=m.dropout,
            embd_pdrop=m.dropout,
            attn_pdrop=m.dropout,
            initializer_range=m.initializer_range,
            **ids,
            **tied,
        )
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size or 4 * m.hidden_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads or m.num_heads,
        max_position_embeddings=m.max_position_embeddings,
        rms_norm_eps=m.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": m.rope_theta},
        attention_dropout=m.dropout,
        initializer_range=m.initializer_range,
        **ids,
        **tied,
    )


def build_model(model_cfg: ModelConfig, vocab_size: int, special_ids: dict[str, int | None]) -> PreTrainedModel:
    """A freshly initialised model with SDPA attention, in fp32, on the current default device.

    Initialisation draws from torch's global RNG, so seed it first for a reproducible model. Under
    ``with torch.device("meta"):`` nothing is allocated (used to count the presets' parameters).
    """
    config = hf_config(model_cfg, vocab_size, special_ids)
    cls = GPT2LMHeadModel if model_cfg.arch == "gpt2" else LlamaForCausalLM
    model = cls._from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    model.loss_type = "ForCausalLM"  # GPT-2's class name maps to no HF loss and would warn; this is the loss it uses
    return model


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied input/output embeddings are counted once)."""
    return sum(p.numel() for p in model.parameters())
