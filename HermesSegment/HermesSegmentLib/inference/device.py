"""Device policy: which device to run on, and mixed precision there."""

from __future__ import annotations

import contextlib
import logging
from typing import ContextManager

import torch

from ..errors import HermesError

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def select_device(requested: str = "auto") -> torch.device:
    """``auto`` takes CUDA, then Apple MPS, then the CPU. Asking for a device that is not there is
    a user mistake with a one-line explanation, not a silent fallback."""
    requested = requested.lower()
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise HermesError(
                "--device cuda: no CUDA GPU is visible to PyTorch (CPU-only torch build or no driver); "
                "use --device cpu, or install a CUDA build of torch"
            )
        return torch.device(requested)
    if requested == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise HermesError("--device mps: Apple Metal is not available here; use --device cpu")
        return torch.device("mps")
    if requested == "cpu":
        return torch.device("cpu")
    if requested != "auto":
        raise HermesError(f"unknown device '{requested}'; choose one of: {', '.join(DEVICE_CHOICES)}")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def autocast(device: torch.device) -> ContextManager:
    """bf16 autocast on CUDA GPUs that support it, fp16 on older ones; full precision elsewhere
    (CPU autocast is slower than float32 for 3D convolutions)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index or 0
        props = torch.cuda.get_device_properties(index)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return device.type.upper()


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()
