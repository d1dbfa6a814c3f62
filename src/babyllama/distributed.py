"""torchrun / DDP helpers. Without torchrun every function answers for a single process.

Launch several processes with ``torchrun --nproc_per_node N -m babyllama train ...``: NCCL on GPUs
(one per process, by LOCAL_RANK), gloo on CPU. Each rank takes a disjoint shard of every global batch,
so the global batch is batch_size x grad_accum x world_size sequences.
"""

from __future__ import annotations

import os
import sys
from datetime import timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a process group is used: `babyllama report` needs none
    import torch


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def _initialized() -> bool:
    """Whether a process group exists; none can before torch.distributed is imported (no import for that)."""
    return "torch.distributed" in sys.modules and _dist().is_initialized()


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def is_distributed() -> bool:
    return world_size() > 1


def init(device: torch.device) -> None:
    """Join the process group (once) when launched by torchrun with more than one process."""
    import torch

    dist = _dist()
    if not is_distributed() or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # `babyllama run` keeps the other ranks waiting at a barrier while rank 0 prepares data or evaluates
    # (BLiMP, fine-tuning): allow hours, not the default minutes, before a collective times out.
    dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=12))


def barrier() -> None:
    if _initialized():
        _dist().barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks, in place (a no-op for one process)."""
    if _initialized():
        dist = _dist()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` for one process)."""
    if not _initialized():
        return [obj]
    dist = _dist()
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not _initialized():
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=0)
    return box[0]
