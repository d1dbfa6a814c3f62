"""Where and how a model runs: the device, the autocast precision, fast fp32 matmuls.

One home for the rules every stage shares (training, the teachers, evaluation), so a process never
resolves its device or its precision two different ways.
"""

from __future__ import annotations

import contextlib

import torch

from babyllama.distributed import local_rank
from babyllama.errors import UserError


def training_device() -> torch.device:
    """This process's device: its own GPU under torchrun, else cuda:0 when there is one, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank() % torch.cuda.device_count())
    return torch.device("cpu")


def resolve_device(device: str | None) -> torch.device:
    """A device the user named (``--device cpu|cuda|cuda:N``), or this process's device when None."""
    if device is None:
        return training_device()
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r}: expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device!r}: CUDA is not available on this machine")
    return dev


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a GradScaler is needed).

    'auto' is bf16 on a GPU that supports it, else fp16 (with a scaler); fp32 on the CPU.
    """
    if precision == "auto":
        if device.type != "cuda":
            return None, False
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "fp32":
        return None, False
    if precision == "bf16":
        return torch.bfloat16, False
    return torch.float16, True


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``; a no-op context for plain fp32 (``dtype`` None)."""
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def allow_tf32(device: torch.device) -> None:
    """TF32 for whatever matmuls stay in fp32 under autocast (GPUs only)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
