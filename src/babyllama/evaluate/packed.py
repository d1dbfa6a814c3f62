"""Both sentences of a minimal pair in one row, so their shared beginning runs through the model once.

Why: a pair's two sentences often begin alike (on the real BLiMP with the ``</s>`` prefix, 20% of all
tokens are such a shared beginning), and a token's log-probability depends only on what comes before
it, so those tokens have the same log-probability in both sentences. A row holds the first input whole
and then the second input's rest after the shared beginning; an attention mask keeps that rest from
seeing the first input's rest, and its position ids restart where it branches off, so every token sees
exactly the tokens and positions it sees in its own sentence. Each sentence's score is still the sum
(or mean) over all of its own scored tokens, shared ones included: the official protocols' sums are
unchanged, only computed once where they are equal.

Only the rows that predict a scored token go through the output layer (no padding, no last tokens).
The plan (ids, masks, which row predicts which token for which sentence) depends on the tokens only,
so the models that share a tokenizer share it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

#: Model classes known to read explicit position ids and a 4D attention mask as given, and whose logits are
#: exactly ``get_output_embeddings()`` of the last hidden state (babyllama's two architectures). Others are
#: scored one sentence per row (`blimp.score_sequences`).
PACKABLE = frozenset({"LlamaForCausalLM", "GPT2LMHeadModel"})
#: The attention implementations that apply a 4D additive mask (flash-attention kernels ignore it).
MASKED_ATTENTION = frozenset({"sdpa", "eager"})

#: One scorer input as `blimp._input` builds it: model input ids and the [first, stop) positions scored.
Input = tuple[list[int], int, int]


@dataclass(frozen=True)
class Batch:
    """Model inputs of a batch of pairs, and where each scored token's log-probability comes from."""

    pairs: list[int]  # the pairs (indices into the caller's lists) in this batch
    ids: torch.Tensor  # [rows, width]: first input, then the second input's rest, then padding
    positions: torch.Tensor  # [rows, width]
    mask: torch.Tensor  # [rows, 1, width, width] bool: True where a token may look
    rows: torch.Tensor  # [n] flat row positions whose output predicts some scored token
    slot_row: torch.Tensor  # [slots] index into ``rows``
    slot_target: torch.Tensor  # [slots] the token that row predicts
    slot_owner: torch.Tensor  # [slots] 0..rows-1: the first sentence of pair i, rows..2*rows-1: the second
    same: torch.Tensor  # [rows] bool: both inputs are identical (the second gets the first's score exactly)


def packable(model: Any) -> bool:
    """Whether `score_batches` may score this model (else one sentence per row)."""
    return (type(model).__name__ in PACKABLE
            and getattr(model.config, "_attn_implementation", None) in MASKED_ATTENTION)


def fuse_gelu(model: Any) -> Any:
    """``model`` with GPT-2's tanh-approximated GELU (``gelu_new``, five elementwise passes in transformers)
    computed by torch's one kernel for the same function; the GPT-2 teacher scores 1.36x as fast on CPU."""
    from transformers.activations import NewGELUActivation

    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, torch.nn.GELU(approximate="tanh"))
    return model


def shared_length(a: list[int], b: list[int]) -> int:
    """How many tokens a and b begin with alike."""
    n = min(len(a), len(b))
    k = 0
    while k < n and a[k] == b[k]:
        k += 1
    return k


def plan(first: list[Input], second: list[Input], tokens_per_batch: int = 4096) -> list[Batch]:
    """Batches of packed pairs (first[i] with second[i]), sorted by row length, longest first, each of about
    ``tokens_per_batch`` tokens including padding (rows of one length batch together, so little padding)."""
    shared = [shared_length(a[0], b[0]) for a, b in zip(first, second, strict=True)]
    width = [len(a[0]) + len(b[0]) - k for a, b, k in zip(first, second, shared, strict=True)]
    order = sorted(range(len(first)), key=lambda i: width[i], reverse=True)
    batches, start = [], 0
    while start < len(order):
        n = max(1, tokens_per_batch // max(1, width[order[start]]))
        chunk = order[start : start + n]
        batches.append(_batch(chunk, first, second, shared))
        start += n
    return batches


def _batch(chunk: list[int], first: list[Input], second: list[Input], shared: list[int]) -> Batch:
    """One batch: the rows, their mask and positions, and the scored slots (see the module docstring)."""
    len_a = torch.tensor([len(first[i][0]) for i in chunk])[:, None]
    len_b = torch.tensor([len(second[i][0]) for i in chunk])[:, None]
    k = torch.tensor([shared[i] for i in chunk])[:, None]
    total = len_a + len_b - k
    width = int(total.max())
    ids = torch.zeros(len(chunk), width, dtype=torch.long)
    for r, i in enumerate(chunk):
        row = first[i][0] + second[i][0][shared[i] :]
        ids[r, : len(row)] = torch.tensor(row, dtype=torch.long)
    col = torch.arange(width)[None, :]
    rest = (col >= len_a) & (col < total)  # the second input's own tokens
    pad = col >= total
    positions = torch.where(rest, col - len_a + k, col).masked_fill(pad, 0)
    q, key = col[:, :, None], col[:, None, :]
    in_a = (q < len_a[:, :, None]) & (key <= q)
    in_rest = rest[:, :, None] & ((key < k[:, :, None]) | ((key >= len_a[:, :, None]) & (key <= q)))
    allowed = in_a | in_rest | (pad[:, :, None] & (key == q))  # padding looks at itself: finite, unused
    mask = allowed[:, None]
    slots = _slots(chunk, first, second, len_a, k, ids)
    rows, slot_row = torch.unique(slots[0], return_inverse=True)
    same = torch.tensor([first[i][0] == second[i][0] and first[i][1:] == second[i][1:] for i in chunk])
    return Batch(chunk, ids, positions, mask, rows, slot_row, slots[1], slots[2], same)


def _slots(chunk: list[int], first: list[Input], second: list[Input], len_a: torch.Tensor, k: torch.Tensor,
           ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(flat row, target token, owner) of every scored token: input position t of a sentence is predicted by
    the row holding its position t - 1. In the row, the first input sits at 0..len_a-1; the second's
    position t at t below the shared length and at len_a + t - shared from there on."""
    n, width = ids.shape
    rows, targets, owners = [], [], []
    for side, inputs in ((0, first), (1, second)):
        length = torch.tensor([len(inputs[i][0]) for i in chunk])[:, None]
        lo = torch.tensor([max(1, inputs[i][1]) for i in chunk])[:, None]
        hi = torch.tensor([inputs[i][2] for i in chunk])[:, None]
        t = torch.arange(int(length.max()))[None, :]
        scored = (t >= lo) & (t < hi) & (t < length)
        at = t if side == 0 else torch.where(t < k, t, len_a + t - k)
        before = (t - 1) if side == 0 else torch.where(t - 1 < k, t - 1, len_a + t - 1 - k)
        row = torch.arange(n)[:, None]
        where = scored.nonzero(as_tuple=True)
        flat_at = (row * width + at.clamp(max=width - 1))[where]
        rows.append((row * width + before.clamp(min=0))[where])
        targets.append(ids.flatten()[flat_at])
        owners.append(where[0] + side * n)
    return torch.cat(rows), torch.cat(targets), torch.cat(owners)


@torch.inference_mode()
def score_batch(model: Any, batch: Batch, reduction: str) -> tuple[list[float], list[float]]:
    """The first and second sentences' scores of every pair in ``batch``, in its order."""
    param = next(model.parameters())
    device = param.device
    mask = batch.mask.to(device)
    if model.config._attn_implementation == "eager":  # eager attention adds the mask to the scores
        mask = torch.zeros(mask.shape, dtype=param.dtype, device=device).masked_fill_(~mask, torch.finfo(param.dtype).min)
    hidden = model.base_model(input_ids=batch.ids.to(device), attention_mask=mask,
                              position_ids=batch.positions.to(device), use_cache=False).last_hidden_state
    picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.rows.to(device))
    logp = torch.log_softmax(model.get_output_embeddings()(picked).float(), dim=-1)
    token_logp = logp[batch.slot_row.to(device), batch.slot_target.to(device)]
    n = len(batch.pairs)
    owner = batch.slot_owner.to(device)
    total = torch.zeros(2 * n, dtype=torch.float32, device=device).index_add_(0, owner, token_logp)
    if reduction == "mean":
        total = total / torch.bincount(owner, minlength=2 * n).clamp(min=1)
    total = total.cpu()
    total[n:][batch.same] = total[:n][batch.same]
    return total[:n].tolist(), total[n:].tolist()


def score_pairs(model: Any, batches: list[Batch], reduction: str, n_pairs: int,
                done: Callable[[int], Any] | None = None) -> tuple[list[float], list[float]]:
    """Scores of the first and second sentence of every pair, in the caller's order; ``done(n)`` is called
    after each batch of n pairs (a progress bar's update)."""
    a, b = [0.0] * n_pairs, [0.0] * n_pairs
    for batch in batches:
        sa, sb = score_batch(model, batch, reduction)
        for i, x, y in zip(batch.pairs, sa, sb, strict=True):
            a[i], b[i] = x, y
        if done is not None:
            done(len(batch.pairs))
    return a, b
