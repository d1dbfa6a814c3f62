"""Dev cross-entropy, perplexity and bits per word of causal LMs on the prepared dev split.

The dev token stream (``<out_dir>/data/dev.bin``) is cut into fixed, non-overlapping windows of
``seq_len`` tokens (babyllama.data.windows) — all of them, where training reports its dev loss on a seeded
subset of the same windows (``train.eval_windows``) with the same function (babyllama.lm.window_ce);
inside each window every token but the first is predicted from the ones before it. The CE is the mean
over all predicted tokens, in nats; perplexity is exp(CE). Bits per word rescales the per-token CE by the dev
split's tokens per word (both counts from the manifest), so models with different tokenizers could be
compared; here they share one, so it mostly makes the figure readable.

Result (one model)::

    {"model": str, "data_dir": str, "seq_len": int, "windows": int, "tokens_scored": int,
     "ce_nats_per_token": float, "perplexity": float, "bits_per_token": float,
     "bits_per_word": float, "dev_tokens": int, "dev_words": int,
     "tokenizer_checked": bool}       # false: the model folder has no tokenizer to compare with the data's
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


def _check_tokenizer(model_dir: Path, tokenizer: Any, data_dir: Path) -> None:
    """The model must read the ids in dev.bin as the data stage wrote them: same vocabulary."""
    from babyllama.data.tokenizer import load_tokenizer

    data_vocab = load_tokenizer(data_dir).get_vocab()
    if tokenizer.get_vocab() != data_vocab:
        raise UserError(f"{model_dir}: its tokenizer differs from {data_dir}/tokenizer, which encoded dev.bin; "
                        "perplexity on these tokens would be meaningless")


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
    if manifest["vocab_size"] > model.get_input_embeddings().num_embeddings:
        raise UserError(f"{model_dir}: the model has {model.get_input_embeddings().num_embeddings} token embeddings, "
                        f"the data's vocabulary {manifest['vocab_size']}")
    if tokenizer is not None:
        _check_tokenizer(Path(model_dir), tokenizer, data_dir)
    elif not allow_unchecked_tokenizer:
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
    for name, r in results.items():
        lines.append(f"| {name} | {r['ce_nats_per_token']:.4f} | {r['perplexity']:.2f} | {r['bits_per_word']:.3f} "
                     f"| {r['windows']} |")
    return "\n".join(lines)
