"""The frozen teachers: found in <out_dir>/models/<name>/, checked against the shared tokenizer, loaded.

Any number of teachers of either architecture (GPT-2, LLaMA) may form the ensemble; what makes their
distributions comparable token by token is the one prepared tokenizer, so that is checked first, from
the saved files alone (no weights are read): same vocabulary size and pad/bos/eos ids as the prepared
manifest, and the same tokenizer.json (a folder without one is refused unless distill.allow_unchecked_tokenizer).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from babyllama.config import Config
from babyllama.errors import UserError
from babyllama.evaluate.formats import LOAD_ERRORS
from babyllama.existing import VOCAB_REMEDY as _REMEDY
from babyllama.existing import model_folder
from babyllama.hf_logging import quiet_transformers
from babyllama.io import file_sha256
from babyllama.runtime import resolve_precision
from babyllama.train.checkpoint import MANIFEST_FILE, damaged_file

if TYPE_CHECKING:  # transformers' model code loads with the teachers: `run` on a finished run plans without it
    from transformers import PreTrainedModel


def teacher_dirs(cfg: Config) -> list[Path]:
    """The teachers' HF folders, in config order: models/<name>/ for a teacher trained here, the folder
    (or cached Hub snapshot) its `from` names for an existing one (UserError naming the first one missing)."""
    if not cfg.teachers:
        raise UserError("distill: the config has no teachers (add at least one entry under `teachers:`)")
    dirs = []
    for t in cfg.teachers:
        d = model_folder(t.from_, f"teachers.{t.name}.from") if t.external else cfg.model_dir(t.name)
        if not (d / "config.json").is_file() or not any(d.glob("*.safetensors")):
            raise UserError(f"teacher {t.name!r}: no trained model in {d}; train it first with "
                            f"`babyllama train CONFIG --model {t.name}`")
        damaged = damaged_file(d) if (d / MANIFEST_FILE).is_file() else None
        if damaged is not None:
            raise UserError(f"teacher {t.name!r}: {d / damaged} does not match its {MANIFEST_FILE} record (damaged); "
                            f"`babyllama train CONFIG --model {t.name}` (or `run`) redoes it")
        dirs.append(d)
    return dirs


def _tokenizer_identity(vocab_size: int, special: dict) -> str:
    return f"vocab {vocab_size}, pad/bos/eos {special.get('pad')}/{special.get('bos')}/{special.get('eos')}"




def _token_config(folder: Path) -> tuple[int, dict]:
    """(vocabulary size, pad/bos/eos ids) of a model folder's config. Read from config.json itself when it
    states all four (every folder save_pretrained writes does: planning a finished run then loads no
    transformers, about a second); else through AutoConfig, which fills in the architecture's defaults."""
    keys = ("vocab_size", "pad_token_id", "bos_token_id", "eos_token_id")
    try:
        top = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        text = (top.get("text_config") or top) if isinstance(top, dict) else None
    except (OSError, ValueError):
        text = None
    if not isinstance(text, dict) or not all(k in text for k in keys):
        from transformers import AutoConfig

        hf = AutoConfig.from_pretrained(str(folder))
        hf = getattr(hf, "text_config", None) or hf
        text = {k: getattr(hf, k, None) for k in keys}
    return int(text["vocab_size"]), {k: text[f"{k}_token_id"] for k in ("pad", "bos", "eos")}


def check_shared_tokenizer(cfg: Config, manifest: dict, dirs: Sequence[Path]) -> None:
    """vocab_alignment 'exact': every teacher and the student use the prepared tokenizer; else one
    UserError naming both. The tokenizer.json files decide; the config's vocabulary size must match
    too (the logits are compared column by column), and with no tokenizer.json to compare (only under
    distill.allow_unchecked_tokenizer, or for a teacher trained here) so must the special ids."""
    want_vocab = int(manifest["vocab_size"])
    want_special = {k: manifest["special_tokens"].get(k) for k in ("pad", "bos", "eos")}
    expected = _tokenizer_identity(want_vocab, want_special)
    student = cfg.student.name if cfg.student else "student"
    prepared_tok = cfg.data_dir / str(manifest.get("tokenizer", "tokenizer")) / "tokenizer.json"
    for t, d in zip(cfg.teachers, dirs, strict=True):
        vocab_size, special = _token_config(d)
        saved_tok = d / "tokenizer.json"
        if saved_tok.is_file() and prepared_tok.is_file() and file_sha256(saved_tok) != file_sha256(prepared_tok):
            raise UserError(f"teacher {t.name!r} ({saved_tok}) and student {student!r} ({prepared_tok}) do not share "
                            f"a tokenizer (the tokenizer.json files differ); {_REMEDY}")
        # An existing model's config.json states generation ids that need not be its tokenizer's (Qwen2: bos
        # None in one, 151643 in the other); the same tokenizer.json decides for it. Ours must agree in full.
        trusted = t.external and saved_tok.is_file()
        got = _tokenizer_identity(vocab_size, want_special if trusted else special)
        if got != expected:
            raise UserError(f"teacher {t.name!r} ({d}: {got}) and student {student!r} (prepared data "
                            f"{cfg.data_dir}: {expected}) do not share a tokenizer; {_REMEDY}")
        if not saved_tok.is_file() and not cfg.distill.allow_unchecked_tokenizer:
            raise UserError(f"teacher {t.name!r} ({d}) has no tokenizer.json to compare with the student's ({prepared_tok}): "
                            "a vocabulary of the same size may number its tokens differently; add the tokenizer it was "
                            "trained with, retrain it on this data, or set distill.allow_unchecked_tokenizer: true")


def teacher_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The teachers compute in the student's precision: its autocast dtype, or float32 when that is fp32
    ('fp32' means fp32 on a GPU too; 'auto' is bf16, else fp16, on a GPU and fp32 on the CPU)."""
    return resolve_precision(precision, device)[0] or torch.float32


class TeacherEnsemble:
    """Frozen teachers in eval mode on one device; calling it returns each teacher's logits (no grad)."""

    def __init__(self, models: Sequence[PreTrainedModel]) -> None:
        self.models = list(models)

    @classmethod
    def load(cls, dirs: Sequence[Path], device: torch.device, dtype: torch.dtype) -> TeacherEnsemble:
        from transformers import AutoModelForCausalLM

        models = []
        with quiet_transformers():  # one "Loading weights" bar per teacher is noise here
            for d in dirs:
                try:
                    m = AutoModelForCausalLM.from_pretrained(str(d), dtype=dtype)
                except LOAD_ERRORS as e:
                    raise UserError(f"teacher {d}: cannot be loaded ({str(e).splitlines()[0]}); train it again") from None
                m.requires_grad_(False)
                models.append(m.eval().to(device))
        return cls(models)

    @torch.no_grad()
    def __call__(self, input_ids: Tensor) -> list[Tensor]:
        return [m(input_ids=input_ids, use_cache=False).logits for m in self.models]
