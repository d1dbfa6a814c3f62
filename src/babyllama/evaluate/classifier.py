"""The classifier a causal checkpoint is fine-tuned as: Hugging Face's last-token head or BabyLM's token-0 head.

``last_token`` is ``AutoModelForSequenceClassification``: a fresh linear layer on the last non-pad token
(LlamaForSequenceClassification / GPT2ForSequenceClassification), so batches are right-padded with the
config's pad id. ``babylm`` is what the BabyLM 2025 and 2026 pipelines build (their
``finetune/classifier_model.py`` with the default flags of ``eval_finetuning.sh``): the bare transformer
(``AutoModel``), the hidden state of token 0, then LayerNorm (no affine, eps 1e-5) - Linear(h, h) - GELU -
LayerNorm - Dropout(0.1) - Linear(h, labels). On a causal model token 0 sees only itself, so that head
classifies from the first token; it is kept because it is what the official numbers measure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from babyllama.errors import UserError
from babyllama.evaluate.formats import LOAD_ERRORS, check_model_files, load_tokenizer, special_token_id
from babyllama.hf_logging import quiet_transformers

#: The official head's dropout and LayerNorm epsilon (the pipeline's argument defaults).
BABYLM_DROPOUT = 0.1
BABYLM_LN_EPS = 1e-5
HEAD_FILE = "classifier_head.safetensors"


class TokenZeroClassifier(nn.Module):
    """BabyLM 2025/2026's classifier: token 0's final hidden state through a two-layer normalised head."""

    def __init__(self, base: nn.Module, hidden: int, num_labels: int) -> None:
        super().__init__()
        self.base = base
        self.config = base.config
        self.head = nn.Sequential(
            nn.LayerNorm(hidden, BABYLM_LN_EPS, elementwise_affine=False),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.LayerNorm(hidden, BABYLM_LN_EPS, elementwise_affine=False),
            nn.Dropout(BABYLM_DROPOUT),
            nn.Linear(hidden, num_labels),
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Any:
        from transformers.modeling_outputs import SequenceClassifierOutput

        hidden = self.base(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return SequenceClassifierOutput(logits=self.head(hidden[:, 0]))

    def save_pretrained(self, folder: str | Path) -> None:
        """The transformer as a Hugging Face folder, the head beside it (safetensors)."""
        from safetensors.torch import save_file

        self.base.save_pretrained(folder)
        save_file({k: v.contiguous() for k, v in self.head.state_dict().items()}, str(Path(folder) / HEAD_FILE))


def _build(model_dir: Path, num_labels: int, head: str) -> Any:
    from transformers import AutoModel, AutoModelForSequenceClassification

    if head == "last_token":
        return AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=num_labels, dtype=torch.float32)
    base = AutoModel.from_pretrained(model_dir, dtype=torch.float32)
    return TokenZeroClassifier(base, base.config.hidden_size, num_labels)


def load_classifier(model_dir: Path, num_labels: int, device: torch.device,
                    head: str = "last_token") -> tuple[Any, Any, int, int | None]:
    """Sequence classifier from a causal checkpoint: (model, tokenizer, pad id, separator id)."""
    check_model_files(model_dir)
    tokenizer = load_tokenizer(model_dir)
    with quiet_transformers():
        try:
            model = _build(model_dir, num_labels, head)
        except LOAD_ERRORS as e:
            raise UserError(f"{model_dir}: cannot build a sequence classifier from it ({str(e).splitlines()[0]})") from None
    sep_id = special_token_id(tokenizer, model.config, "eos")
    pad_id = special_token_id(tokenizer, model.config, "pad")
    if pad_id is None:
        pad_id = sep_id
    if pad_id is None:
        raise UserError(f"{model_dir}: the tokenizer defines neither a pad nor an eos token to pad batches with")
    model.config.pad_token_id = pad_id
    return model.to(device), tokenizer, pad_id, sep_id
