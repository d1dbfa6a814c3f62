"""Causal-LM cross-entropy fused with the output projection, a chunk of positions at a time.

Why: the plain step writes the full (batch x seq x vocab) logits, upcasts them, takes a log-softmax,
and on the way back writes a gradient of the same size: at vocab 16k that is hundreds of MB of
element-wise traffic per step. Here each chunk of rows computes its logits, its loss and -- when a
gradient will be needed -- its gradients with respect to the hidden states and the output weight, then
drops the logits, so the largest temporary is one chunk's logits (the idea of Liger Kernel's fused
linear cross-entropy, written for any device in plain torch). Mathematically the loss is the same as
``F.cross_entropy(hidden @ weight.T, targets)``; only rounding differs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 21  # logits per chunk (8 MB in fp32): one chunk stays in a CPU's cache hierarchy


class _LinearCrossEntropy(torch.autograd.Function):
    """Mean CE over non-ignored rows of ``hidden @ weight.T``; gradients are made in the forward pass."""

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk: int, want_grad: bool) -> Tensor:
        n_valid = (targets != IGNORE_INDEX).sum().clamp(min=1)
        acc = torch.promote_types(hidden.dtype, torch.float32)  # at least fp32 for the softmax and the sums
        total = torch.zeros((), dtype=acc, device=hidden.device)
        grad_h = torch.empty_like(hidden) if want_grad else None
        grad_w = torch.zeros_like(weight, dtype=acc) if want_grad else None
        for start in range(0, hidden.shape[0], chunk):
            h, y = hidden[start : start + chunk], targets[start : start + chunk]
            logits = (h @ weight.to(h.dtype).T).to(acc)
            valid = y != IGNORE_INDEX
            safe_y = y.clamp(min=0).unsqueeze(1)
            lse = torch.logsumexp(logits, dim=-1)
            total += ((lse - logits.gather(1, safe_y).squeeze(1)) * valid).sum()
            if want_grad:  # d(sum CE)/d logits = softmax - one_hot, on valid rows; reuse the logits' memory
                g = logits.sub_(lse.unsqueeze(1)).exp_()
                g.scatter_add_(1, safe_y, torch.full_like(safe_y, -1, dtype=g.dtype))
                g.mul_(valid.unsqueeze(1))
                g = g.to(h.dtype)
                grad_h[start : start + chunk] = g @ weight.to(h.dtype)
                grad_w.add_(g.T @ h)
        ctx.grads = (grad_h, grad_w, n_valid, weight.dtype)  # intermediates, not inputs: kept on ctx
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        grad_h, grad_w, n_valid, weight_dtype = ctx.grads
        if grad_h is None:
            raise RuntimeError("linear_cross_entropy was called without gradients enabled")
        scale = grad_out / n_valid
        return (grad_h * scale.to(grad_h.dtype), (grad_w * scale).to(weight_dtype), None, None, None)


def linear_cross_entropy(hidden: Tensor, weight: Tensor, labels: Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    """Causal-LM loss as Hugging Face computes it from ``labels=input_ids`` (position t predicts labels[t+1],
    -100 ignored, mean over predicted tokens), from final hidden states (B, L, H) and the output weight
    (V, H), without the (B, L, V) logits."""
    b, length, h = hidden.shape
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    want_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    chunk = max(1, chunk_elements // weight.shape[0])
    return _LinearCrossEntropy.apply(hidden.reshape(b * length, h), weight, targets.reshape(-1), chunk, want_grad)


class _HiddenStatesOut(torch.nn.Module):
    """Stands in for the LM head while the fused loss runs: hands the hidden states through and keeps
    the head's weight registered under the same name (so DDP, the optimizer and the state dict see no
    change)."""

    def __init__(self, weight: torch.nn.Parameter) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, hidden: Tensor) -> Tensor:
        return hidden


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside DDP and/or torch.compile wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None:
            return model
        model = inner


@contextlib.contextmanager
def hidden_states_as_logits(model: torch.nn.Module) -> Iterator[Tensor]:
    """Within the block, ``model(...).logits`` are the final hidden states; yields the output weight.

    The model is still called through its wrappers (DDP must see the forward). One stand-in per model
    is kept, so torch.compile sees two head modules in all and compiles each once.
    """
    inner = _unwrap(model)
    head = inner.get_output_embeddings()
    stand_in = getattr(inner, "_babyllama_hidden_head", None)
    if stand_in is None or stand_in.weight is not head.weight:
        stand_in = _HiddenStatesOut(head.weight)
        object.__setattr__(inner, "_babyllama_hidden_head", stand_in)  # not a submodule: no duplicate weight
    inner.set_output_embeddings(stand_in)
    try:
        yield head.weight
    finally:
        inner.set_output_embeddings(head)


def fused_lm_loss(model: torch.nn.Module, input_ids: Tensor) -> Tensor:
    """The causal-LM loss of ``model`` on ``input_ids`` through :func:`linear_cross_entropy`."""
    with hidden_states_as_logits(model) as weight:
        hidden = model(input_ids=input_ids, use_cache=False).logits
    return linear_cross_entropy(hidden, weight, input_ids)

