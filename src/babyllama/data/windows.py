"""Windows over a flat token stream: the unit every stage trains, caches and evaluates on.

Fixed windows are non-overlapping: window ``i`` covers tokens ``[i*L, (i+1)*L)``. Random-offset windows
(the paper's training default) shift window ``i`` by a fresh offset ``o`` in ``[0, L)``; like the reference
code we keep one window fewer than fit so that every shifted window stays in range.
"""

from __future__ import annotations

import numpy as np


def num_fixed_windows(n_tokens: int, seq_len: int) -> int:
    return n_tokens // seq_len


def num_random_windows(n_tokens: int, seq_len: int) -> int:
    return max(n_tokens // seq_len - 1, 0)


def window_starts(indices: np.ndarray, seq_len: int, offsets: np.ndarray | None = None) -> np.ndarray:
    starts = np.asarray(indices, dtype=np.int64) * seq_len
    return starts if offsets is None else starts + np.asarray(offsets, dtype=np.int64)


def gather_windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int) -> np.ndarray:
    """Stack ``tokens[s:s+seq_len]`` for every start into an int64 array of shape (len(starts), seq_len)."""
    idx = np.asarray(starts, dtype=np.int64)[:, None] + np.arange(seq_len, dtype=np.int64)[None, :]
    return np.asarray(tokens[idx], dtype=np.int64)


def dev_subset(n_windows: int, k: int, seed: int) -> np.ndarray:
    """A fixed, seeded, sorted subset of ``min(k, n_windows)`` dev window indices (same for every model)."""
    if k >= n_windows:
        return np.arange(n_windows, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_windows, size=k, replace=False)).astype(np.int64)
