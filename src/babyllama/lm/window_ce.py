"""Mean next-token cross-entropy over fixed windows: the one definition of "dev CE".

The training loop reports it on a seeded subset of the dev windows (sharded over DDP ranks) and the
perplexity evaluation on all of them (in one process), so a model's dev loss during training and its
evaluated dev CE are the same number computed the same way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from babyllama import distributed as dist
from babyllama import progress as bars
from babyllama.data.windows import gather_windows, window_starts
from babyllama.runtime import autocast


@torch.no_grad()
def window_ce(
    model: Any,
    tokens: np.ndarray,
    indices: np.ndarray,
    seq_len: int,
    batch_size: int,
    *,
    dtype: torch.dtype | None = None,
    sharded: bool = False,
) -> float:
    """Mean next-token CE (nats) over the fixed windows ``indices`` of ``tokens``.

    Every token of a window but the first is predicted from the ones before it. ``dtype`` is the
    autocast dtype (None: fp32). ``sharded``: each DDP rank scores its share and the sums are added
    over ranks (a collective: every rank must call it); otherwise this process scores them all, so
    evaluation on rank 0 never waits for the others. The model's train/eval mode is restored.
    """
    return _window_ce(model, tokens, indices, seq_len, batch_size, dtype, sharded, per_window=None)


@torch.no_grad()
def window_ce_per_window(model: Any, tokens: np.ndarray, indices: np.ndarray, seq_len: int,
                         batch_size: int) -> tuple[float, np.ndarray]:
    """``window_ce`` (the same number, computed the same way) and each window's own mean CE, with a bar.

    The per-window values let two models be compared window by window (a paired interval)."""
    per: list[np.ndarray] = []
    mean = _window_ce(model, tokens, indices, seq_len, batch_size, None, False, per_window=per)
    return mean, np.concatenate(per) if per else np.zeros(0)


def _window_ce(model: Any, tokens: np.ndarray, indices: np.ndarray, seq_len: int, batch_size: int,
               dtype: torch.dtype | None, sharded: bool, per_window: list[np.ndarray] | None) -> float:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    mine = indices[dist.rank() :: dist.world_size()] if sharded else indices
    total = torch.zeros(2, dtype=torch.float64, device=device)
    batches = range(0, len(mine), batch_size)
    for i in batches if per_window is None else bars.iterate(batches, "dev CE", "batch"):  # evaluation: a bar
        x = torch.from_numpy(gather_windows(tokens, window_starts(mine[i : i + batch_size], seq_len), seq_len)).to(device)
        n = x.shape[0] * (x.shape[1] - 1)
        if per_window is None:
            with autocast(device, dtype):
                loss = model(input_ids=x, labels=x, use_cache=False).loss
        else:  # each window's mean from one CE over the logits (not the model's own loss and then this again)
            with autocast(device, dtype):
                logits = model(input_ids=x, use_cache=False).logits
            ce = torch.nn.functional.cross_entropy(logits[:, :-1].float().transpose(1, 2), x[:, 1:], reduction="none")
            per_window.append(ce.mean(-1).double().cpu().numpy())
            loss = ce.double().mean()
        total[0] += loss.double() * n
        total[1] += n
    if sharded:
        dist.all_reduce_sum(total)
    model.train(was_training)
    return (total[0] / total[1]).item()
