"""Existing Hugging Face models and tokenizers as inputs (``teachers[].from``, ``tokenizer.from``).

A ``from`` value is a folder, or a Hub id that is already in the local Hugging Face cache
(``HF_HUB_CACHE``, else the default cache): babyllama never downloads, so a Hub id that is not cached is
refused in one line, as is a folder that holds no model. Every check here reads small files only
(config.json, the safetensors headers, tokenizer.json), so a config is vetted before anything is written.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from babyllama.config import Config
from babyllama.errors import UserError
from babyllama.io import file_sha256

#: How a Hub id looks ("org/name" or a bare legacy "name"); a folder of that name wins.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _from_cache(spec: str, key: str) -> Path:
    """The cached snapshot folder of Hub id ``spec`` (local files only); UserError when not cached."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    cache = os.environ.get("HF_HUB_CACHE") or None
    try:
        return Path(snapshot_download(repo_id=spec, local_files_only=True, cache_dir=cache))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError, ValueError):
        where = cache or "the default Hugging Face cache"
        raise UserError(f"{key}: {spec!r} is neither a folder nor a Hub id in the local Hugging Face cache ({where}); "
                        f"babyllama never downloads: fetch it first (`huggingface-cli download {spec}`) or give a "
                        "folder") from None


def resolve(spec: str, key: str) -> Path:
    """The folder ``spec`` names: itself when it is a folder, else the cached snapshot of that Hub id."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise UserError(f"{key}: {spec} is a file, expected a model folder (config.json + *.safetensors)")
    if not _HUB_ID.match(spec):
        raise UserError(f"{key}: {spec}: no such folder")
    return _from_cache(spec, key)


def model_folder(spec: str, key: str) -> Path:
    """A causal-LM folder: config.json with a model_type, and safetensors weights; else one UserError."""
    folder = resolve(spec, key)
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"{key}: {folder} is not a model folder (no config.json)")
    try:
        hf = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{key}: {config} is not readable JSON ({e})") from None
    if not isinstance(hf, dict) or not hf.get("model_type"):
        raise UserError(f"{key}: {config} names no model_type: not a Hugging Face model folder")
    if not any(folder.glob("*.safetensors")):
        other = "pytorch_model.bin weights only; convert them to safetensors" if any(folder.glob("*.bin")) \
            else "no *.safetensors weights"
        raise UserError(f"{key}: {folder}: {other}")
    return folder


def tokenizer_folder(spec: str, key: str) -> Path:
    """A folder holding tokenizer.json (a model folder or a tokenizer folder); else one UserError."""
    folder = resolve(spec, key)
    if not (folder / "tokenizer.json").is_file():
        raise UserError(f"{key}: {folder} has no tokenizer.json (a fast tokenizer is needed)")
    return folder


@dataclass(frozen=True)
class ModelInfo:
    """What an existing model's small files say: enough for the ledger's rules and the early checks."""

    model_type: str
    parameters: int
    vocab_size: int | None
    max_positions: int | None
    shape: tuple[int | None, int | None, int | None]  # (hidden_size, layers, vocab)


def _text_config(hf: dict) -> dict:
    return hf.get("text_config") or hf


def parameter_count(folder: Path) -> int:
    """Parameters stored in the folder's safetensors files (headers only; tied tensors stored once)."""
    from safetensors import safe_open

    total = 0
    for f in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(f), framework="numpy") as st:
                total += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
        except Exception as e:  # safetensors raises its own error types for a damaged header
            raise UserError(f"{f}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    return total


def model_info(folder: Path) -> ModelInfo:
    top = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    hf = _text_config(top)  # multimodal configs keep the language model's keys under text_config
    positions = hf.get("max_position_embeddings", hf.get("n_positions"))
    hidden = hf.get("hidden_size", hf.get("n_embd"))
    layers = hf.get("num_hidden_layers", hf.get("n_layer"))
    vocab = hf.get("vocab_size")
    return ModelInfo(str(top.get("model_type")), parameter_count(folder), vocab, positions, (hidden, layers, vocab))


def check_sources(cfg: Config) -> None:
    """Vet every `from` of ``cfg`` (teachers, tokenizer) before a command writes anything, the teachers'
    vocabularies included as far as the config decides them."""
    for t in cfg.external_teachers:
        key = f"teachers.{t.name}.from"
        info = model_info(model_folder(t.from_, key))
        if info.max_positions is not None and info.max_positions < cfg.data.seq_len:
            raise UserError(f"{key}: the model takes at most {info.max_positions} positions, data.seq_len is "
                            f"{cfg.data.seq_len}")
    if cfg.tokenizer.from_ is not None:
        tokenizer_folder(cfg.tokenizer.from_, "tokenizer.from")
    check_teacher_vocabularies(cfg)


#: What to do about a teacher whose tokenizer is not the student's (vocab_alignment 'exact').
VOCAB_REMEDY = ("retrain the teacher on this data, take the student's tokenizer from it (tokenizer.from), or align the "
                "two vocabularies on the text (distill.vocab_alignment: span)")


def _not_babyllamas(tok_json: Path, vocab_size: int) -> str | None:
    """Why ``tok_json`` cannot be the byte-level BPE babyllama trains with ``vocab_size`` tokens (None: it may
    be one; only training the student's tokenizer on the data decides then)."""
    from tokenizers import Tokenizer

    from babyllama.data.tokenizer import SPECIAL_TOKENS, new_tokenizer

    try:
        raw = json.loads(tok_json.read_text(encoding="utf-8"))
        tok = Tokenizer.from_file(str(tok_json))
    except Exception as e:  # OSError, bad JSON, or the tokenizers library's own error type
        return f"not a readable tokenizer.json: {str(e).splitlines()[0]}"
    ours = json.loads(new_tokenizer().to_str())
    kind = (raw.get("model") or {}).get("type")
    size = tok.get_vocab_size(with_added_tokens=True)
    if kind != ours["model"]["type"]:
        return f"a {kind} tokenizer; babyllama trains a byte-level BPE"
    if size > vocab_size:
        return f"{size:,} tokens, tokenizer.vocab_size is {vocab_size:,}"
    if [tok.id_to_token(i) for i in range(len(SPECIAL_TOKENS))] != SPECIAL_TOKENS:
        return f"its first tokens are not {' '.join(SPECIAL_TOKENS)}"
    if any(raw.get(k) != ours.get(k) for k in ("normalizer", "pre_tokenizer")):
        return "another normaliser or pre-tokenizer than babyllama's byte-level BPE"
    return None


def check_teacher_vocabularies(cfg: Config, student_tokenizer: Path | None = None) -> None:
    """vocab_alignment 'exact': refuse, before anything is written, an existing teacher whose tokenizer
    cannot be the student's, in one line. ``student_tokenizer`` is the student's tokenizer.json once it is
    known (prepared, or trained in memory); before that it is tokenizer.from's, and with a BPE still to be
    trained here only what is certain refuses (another kind of tokenizer, a larger vocabulary). The
    distillation's own check (distill.teachers.check_shared_tokenizer) still decides in full."""
    if cfg.distill.vocab_alignment != "exact" or cfg.student is None or not cfg.external_teachers:
        return
    if student_tokenizer is None and cfg.tokenizer.from_ is not None:
        student_tokenizer = tokenizer_folder(cfg.tokenizer.from_, "tokenizer.from") / "tokenizer.json"
    for t in cfg.external_teachers:
        tok = model_folder(t.from_, f"teachers.{t.name}.from") / "tokenizer.json"
        if not tok.is_file():
            if cfg.distill.allow_unchecked_tokenizer:
                continue
            raise UserError(f"teacher {t.name!r} ({tok.parent}) has no tokenizer.json to compare with the student's: a "
                            "vocabulary of the same size may number its tokens differently; add the tokenizer it was "
                            "trained with, or set distill.allow_unchecked_tokenizer: true")
        if student_tokenizer is not None:
            if file_sha256(tok) != file_sha256(student_tokenizer):
                raise UserError(f"teacher {t.name!r} ({tok}) and the student ({student_tokenizer}) do not share a "
                                f"tokenizer (distill.vocab_alignment: exact); {VOCAB_REMEDY}")
        elif (why := _not_babyllamas(tok, cfg.tokenizer.vocab_size)) is not None:
            raise UserError(f"teacher {t.name!r} ({tok}) cannot share the tokenizer babyllama trains for the student "
                            f"({why}; distill.vocab_alignment: exact); {VOCAB_REMEDY}")
