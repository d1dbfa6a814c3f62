"""Check an exported GGUF with llama.cpp itself (through llama-cpp-python): same tokens in, same log-probs out.

Both sides are fed the token ids of the Hugging Face tokenizer, so the comparison is of the models, not of
two tokenizers (llama.cpp's BPE tokenizer does not apply our NFKC normaliser or leading space). Used by
tests/test_export.py and benchmarks/bench_export.py; llama-cpp-python is an optional extra
(``pip install babyllama[llama-cpp]``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from babyllama.evaluate.blimp import Pair, encode, score_sequences
from babyllama.evaluate.formats import max_positions


def open_gguf(path: str | Path, n_ctx: int) -> Any:
    """A llama.cpp model on the CPU, one thread, keeping the logits of every position."""
    from llama_cpp import Llama

    return Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, n_threads=1, logits_all=True, verbose=False)


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def gguf_logprobs(llm: Any, ids: list[int]) -> np.ndarray:
    """log p(. | ids[:i+1]) for every position i, from llama.cpp: shape (len(ids), vocab)."""
    llm.reset()
    llm.eval(list(map(int, ids)))
    return _log_softmax(np.asarray(llm.scores[: len(ids)]))


@torch.no_grad()
def hf_logprobs(model: Any, ids: list[int]) -> np.ndarray:
    logits = model(torch.tensor([ids], dtype=torch.long)).logits[0].double()
    return torch.log_softmax(logits, -1).numpy()


def logprob_gap(model: Any, llm: Any, windows: list[list[int]]) -> dict[str, float]:
    """Largest |HF − llama.cpp| log-prob over windows: of the observed next token, and over the whole vocab."""
    next_gap, full_gap, n = 0.0, 0.0, 0
    for ids in windows:
        a, b = hf_logprobs(model, ids), gguf_logprobs(llm, ids)
        full_gap = max(full_gap, float(np.abs(a - b).max()))
        rows = np.arange(len(ids) - 1)
        nxt = np.asarray(ids[1:])
        next_gap = max(next_gap, float(np.abs(a[rows, nxt] - b[rows, nxt]).max()))
        n += len(ids) - 1
    return {"next_token_max_abs_nats": next_gap, "full_vocab_max_abs_nats": full_gap, "positions": n}


def gguf_sentence_scores(llm: Any, seqs: list[list[int]], prefix_id: int | None, limit: int | None) -> list[float]:
    """Sum of log p(token | prefix, earlier tokens) of each sequence, by llama.cpp (BLiMP's sum protocol).

    Like ``score_sequences``, a sequence longer than the model's ``limit`` positions keeps its last tokens.
    """
    scores: dict[tuple[int, ...], float] = {}
    for s in seqs:
        key = tuple(s)
        if key in scores:
            continue
        x = ([prefix_id] if prefix_id is not None else []) + list(s)
        x = x[-limit:] if limit else x
        lp = gguf_logprobs(llm, x)
        scores[key] = float(sum(lp[i, x[i + 1]] for i in range(len(x) - 1)))
    return [scores[tuple(s)] for s in seqs]


def blimp_agreement(model: Any, tokenizer: Any, llm: Any, pairs: list[Pair], prefix_id: int | None) -> dict[str, float]:
    """Pair accuracy (good > bad, ties wrong) of the HF model and of the GGUF on the same pairs and tokens."""
    good = encode(tokenizer, [p.good for p in pairs], leading_space=True)
    bad = encode(tokenizer, [p.bad for p in pairs], leading_space=True)
    hf_good, hf_bad = (score_sequences(model, s, prefix_id=prefix_id) for s in (good, bad))
    limit = max_positions(model.config)
    gg_good, gg_bad = (gguf_sentence_scores(llm, s, prefix_id, limit) for s in (good, bad))
    hf = np.array(hf_good) > np.array(hf_bad)
    gg = np.array(gg_good) > np.array(gg_bad)
    return {"pairs": len(pairs), "hf_accuracy": float(hf.mean()), "gguf_accuracy": float(gg.mean()),
            "same_decision": float((hf == gg).mean())}
