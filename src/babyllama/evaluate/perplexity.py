"""Dev cross-entropy, perplexity and bits per word of causal LMs on the prepared dev split.

The dev token stream (``<out_dir>/data/dev.bin``) is cut into fixed, non-overlapping windows of
``seq_len`` tokens (babyllama.data.windows) — all of them, where training reports its dev loss on a seeded
subset of the same windows (``train.eval_windows``) with the same function (babyllama.lm.window_ce);
inside each window every token but the first is predicted from the ones before it. The CE is the mean
over all predicted tokens, in nats; perplexity is exp(CE). Bits per word rescales the per-token CE by the dev
split's tokens per word (both counts from the manifest): the dev text's total loss per word, a unit that
does not depend on the tokenizer.

A model with its own tokenizer (an existing teacher, `teachers[].from`) cannot read dev.bin's ids: the dev
text is decoded from them by the data's tokenizer, document by document, encoded again by the model's
own tokenizer (documents joined by its eos, as the data stage joins ours), and cut into windows of
``seq_len`` of its tokens the same way. Its loss per one of ITS tokens is not comparable with ours, so that
result has no ``ce_nats_per_token`` / ``perplexity`` (the report's dev CE column stays empty for it) and
shows ``bits_per_word`` only, next to ``ce_nats_per_own_token`` and its own token count.

Result (one model)::

    {"model": str, "data_dir": str, "seq_len": int, "windows": int, "tokens_scored": int,
     "ce_nats_per_token": float, "perplexity": float, "bits_per_token": float,
     "bits_per_word": float, "dev_tokens": int, "dev_words": int,
     "tokenizer_checked": bool}       # false: the model folder has no tokenizer to compare with the data's

    own tokenizer: {"model", "data_dir", "seq_len", "windows", "tokens_scored", "tokenizer": "own",
     "ce_nats_per_own_token": float, "own_dev_tokens": int, "bits_per_word": float, "dev_words": int,
     "tokenizer_checked": true}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from babyllama.config import Config
from babyllama.data.tokens import load_tokens, read_manifest
from babyllama.data.windows import dev_subset, num_fixed_windows
from babyllama.errors import UserError
from babyllama.evaluate.formats import load_causal_lm, max_positions
from babyllama.lm.window_ce import window_ce_per_window
from babyllama.runtime import resolve_device

#: Seed of the dev-window subset when ``max_windows`` caps it (the same subset for every model).
SUBSET_SEED = 0


def _reads_dev_ids(tokenizer: Any, data_dir: Path) -> bool:
    """Whether the model reads the ids in dev.bin as the data stage wrote them (the same vocabulary)."""
    from babyllama.data.tokenizer import load_tokenizer

    return bool(tokenizer.get_vocab() == load_tokenizer(data_dir).get_vocab())


def own_dev_tokens(tokenizer: Any, data_dir: Path, eos: int | None) -> np.ndarray:
    """The dev split as a model with its own tokenizer reads it: each document's text (decoded from dev.bin by
    the data's tokenizer; documents end at the data's eos) encoded by ``tokenizer``, joined by its eos."""
    from babyllama.data.tokenizer import load_tokenizer

    ids = np.asarray(load_tokens(data_dir, "dev"), dtype=np.int64)
    ends = np.flatnonzero(ids == eos) if eos is not None else np.zeros(0, dtype=np.int64)
    docs = np.split(ids, ends + 1)
    data_tok = load_tokenizer(data_dir)
    texts = [data_tok.decode(d.tolist(), skip_special_tokens=True, clean_up_tokenization_spaces=False).lstrip(" ")
             for d in docs if len(d)]
    own_eos = getattr(tokenizer, "eos_token_id", None)
    out: list[int] = []
    for encoded in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        out += [*encoded, *([own_eos] if own_eos is not None else [])]
    return np.asarray(out, dtype=np.int64)


def _own_tokenizer_result(model: Any, tokenizer: Any, model_dir: Path, data_dir: Path, manifest: dict[str, Any],
                          seq_len: int, batch_size: int, max_windows: int | None) -> dict[str, Any]:
    """Dev loss of a model with its own tokenizer, per word of the dev text (see the module docstring)."""
    tokens = own_dev_tokens(tokenizer, data_dir, manifest["special_tokens"].get("eos"))
    n_windows = num_fixed_windows(len(tokens), seq_len)
    if n_windows == 0:
        raise UserError(f"{model_dir}: the dev text is {len(tokens)} of its tokens, fewer than one window of {seq_len}")
    indices = dev_subset(n_windows, max_windows, SUBSET_SEED) if max_windows else np.arange(n_windows, dtype=np.int64)
    ce, _ = window_ce_per_window(model, tokens, indices, seq_len, batch_size)
    words = int(manifest["splits"]["dev"].get("words") or 0)
    return {"model": str(model_dir), "data_dir": str(data_dir), "seq_len": seq_len, "windows": int(len(indices)),
            "tokens_scored": int(len(indices) * (seq_len - 1)), "tokenizer": "own", "ce_nats_per_own_token": ce,
            "own_dev_tokens": int(len(tokens)),
            "bits_per_word": ce * len(tokens) / words / math.log(2) if words else float("nan"),
            "dev_words": words, "tokenizer_checked": True}


def evaluate_perplexity(
    model_dir: str | Path,
    data_dir: str | Path,
    *,
    seq_len: int,
    device: str | None = None,
    batch_size: int = 32,
    max_windows: int | None = None,
    allow_unchecked_tokenizer: bool = False,
) -> dict[str, Any]:
    """Dev CE / perplexity / bits per word of one causal LM (see the module docstring).

    A model folder without a tokenizer cannot be shown to read dev.bin's ids as the data stage wrote
    them (a same-sized vocabulary proves nothing), so it is refused unless ``allow_unchecked_tokenizer``."""
    data_dir = Path(data_dir)
    if seq_len < 2:
        raise UserError(f"seq_len must be at least 2 (one token predicted from another), got {seq_len}")
    manifest = read_manifest(data_dir)
    tokens = load_tokens(data_dir, "dev")
    n_windows = num_fixed_windows(len(tokens), seq_len)
    if n_windows == 0:
        raise UserError(f"{data_dir}: the dev split has {len(tokens)} tokens, fewer than one window of {seq_len}")
    indices = (dev_subset(n_windows, max_windows, SUBSET_SEED) if max_windows
               else np.arange(n_windows, dtype=np.int64))
    model, tokenizer = load_causal_lm(model_dir, resolve_device(device), need_tokenizer=False)
    limit = max_positions(model.config)
    if limit is not None and seq_len > limit:
        raise UserError(f"{model_dir}: seq_len {seq_len} exceeds the model's {limit} positions")
    if tokenizer is not None and not _reads_dev_ids(tokenizer, data_dir):
        return _own_tokenizer_result(model, tokenizer, Path(model_dir), data_dir, manifest, seq_len, batch_size,
                                     max_windows)
    if manifest["vocab_size"] > model.get_input_embeddings().num_embeddings:
        raise UserError(f"{model_dir}: the model has {model.get_input_embeddings().num_embeddings} token embeddings, "
                        f"the data's vocabulary {manifest['vocab_size']}")
    if tokenizer is None and not allow_unchecked_tokenizer:
        raise UserError(f"{model_dir}: has no tokenizer to compare with {data_dir}/tokenizer, which encoded dev.bin, so "
                        "its perplexity on these ids may be meaningless; add the tokenizer it was trained with, or pass "
                        "--allow-unchecked-tokenizer")
    ce, per_window = window_ce_per_window(model, tokens, indices, seq_len, batch_size)
    dev = manifest["splits"]["dev"]
    tokens_per_word = dev["tokens"] / dev["words"] if dev.get("words") else float("nan")
    return {
        "model": str(model_dir),
        "data_dir": str(data_dir),
        "seq_len": seq_len,
        "windows": int(len(indices)),
        "tokens_scored": int(len(indices) * (seq_len - 1)),
        "ce_nats_per_token": ce,
        "perplexity": math.exp(ce),
        "bits_per_token": ce / math.log(2),
        "bits_per_word": ce * tokens_per_word / math.log(2),
        "dev_tokens": int(dev["tokens"]),
        "dev_words": int(dev.get("words") or 0),
        "tokenizer_checked": tokenizer is not None,
        # each window's mean CE, in ``indices`` order: two models compare window by window (report's paired interval)
        "window_ce": [round(float(v), 5) for v in per_window],
    }


def perplexity_for_config(cfg: Config, device: str | None = None) -> dict[str, dict[str, Any]]:
    """Perplexity of every model of ``cfg`` that has been trained; the others are named and skipped."""
    results: dict[str, dict[str, Any]] = {}
    missing = []
    for m in cfg.models():
        folder = cfg.model_dir(m.name)
        if not (folder / "config.json").is_file():
            missing.append(f"{m.name} ({folder})")
            continue
        results[m.name] = evaluate_perplexity(folder, cfg.data_dir, seq_len=cfg.data.seq_len, device=device)
    if missing:
        print(f"perplexity: not trained yet, skipped: {', '.join(missing)}")
    if not results:
        raise UserError(f"{cfg.out}: no trained model under {cfg.out / 'models'} (run `babyllama run` or `babyllama train`)")
    return results


def format_perplexity_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per model."""
    lines = ["| model | dev CE (nats/token) | perplexity | bits/word | windows |", "|---|---:|---:|---:|---:|"]
    for name, r in results.items():  # a model with its own tokenizer: per word only (its tokens are not ours)
        ce, ppl = (f"{r['ce_nats_per_token']:.4f}", f"{r['perplexity']:.2f}") if "perplexity" in r else ("–", "–")
        lines.append(f"| {name} | {ce} | {ppl} | {r['bits_per_word']:.3f} | {r['windows']} |")
    return "\n".join(lines)
