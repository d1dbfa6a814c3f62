"""What the training loop minimises: one pluggable objective per run.

The loop (babyllama.train.loop.fit) owns data, optimiser, precision, checkpoints and logging; an
objective only turns a micro-batch into a scalar loss. Pretraining uses `LMObjective`; distillation
plugs in its own objective (teachers or a logit cache) without touching the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

#: An extra metric may be a float or a detached 0-dim tensor; the loop averages tensors on device and
#: converts them only at log steps, so objectives need not force a device sync every micro-step.
Metric = float | torch.Tensor


@dataclass
class Batch:
    """One micro-batch of training windows: input ids on the training device, window ids on the CPU."""

    input_ids: torch.Tensor  # (B, L) int64
    # (B,) int64 on the CPU (only used to look cached rows up, so no device round trip per step):
    # fixed-layout window index (start // seq_len); -1 for random-offset windows
    window_ids: torch.Tensor
    # (B,) int64 on the CPU: the epoch each window belongs to (the teacher cache's fresh draws per epoch);
    # None: epoch 0
    epochs: torch.Tensor | None = None


@runtime_checkable
class Objective(Protocol):
    def setup(self, device: torch.device, dtype: torch.dtype | None) -> None:
        """Called once before training. ``device`` is this process's training device; ``dtype`` is the
        autocast compute dtype (torch.bfloat16 / torch.float16) or None for plain fp32.

        ``loss`` is always called inside the loop's ``torch.autocast`` context, so nothing needs to
        enter autocast itself; the dtype is given so frozen teachers can be stored in it to save memory.
        """
        ...

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, Metric]]:
        """Scalar loss to backpropagate (mean over the micro-batch) and extra metrics, e.g.
        {"ce": ..., "kd": ..., "agree": ...}, with the same keys on every call (they are averaged over
        micro-steps and ranks between log lines). ``model`` may be wrapped (DDP, torch.compile): call it,
        don't reach into it; pass ``use_cache=False`` (no KV cache is needed while training)."""
        ...

    def fingerprint(self) -> dict:
        """Everything that changes the optimisation (loss options, teacher hashes ...). It goes into the
        resume hash, so resuming with a different objective is refused."""
        ...


class LMObjective:
    """Plain causal-LM cross-entropy: HF shifts ``labels=input_ids`` and averages over predicted tokens.

    ``fused``: the same loss through :func:`babyllama.train.fused_ce.fused_lm_loss`, which never holds
    the full logits (``train.fused_loss``)."""

    fused = False  # a class default too: subclasses that define their own __init__ keep working

    def __init__(self, fused: bool = False) -> None:
        self.fused = fused

    def setup(self, device: torch.device, dtype: torch.dtype | None) -> None:
        pass  # nothing to move: the model is the loop's business

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, Metric]]:
        if self.fused:
            from babyllama.train.fused_ce import fused_lm_loss

            loss = fused_lm_loss(model, batch.input_ids)
            return loss, {"ce": loss.detach()}
        out = model(input_ids=batch.input_ids, labels=batch.input_ids, use_cache=False)
        return out.loss, {"ce": out.loss.detach()}

    def fingerprint(self) -> dict:
        return {"objective": "lm"}
