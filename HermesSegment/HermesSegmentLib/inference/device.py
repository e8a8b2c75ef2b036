"""Device policy: which device to run on, and mixed precision there."""

from __future__ import annotations

import contextlib
import logging
from typing import ContextManager, Optional

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


PRECISION_CHOICES = ("auto", "float32", "bfloat16")


def compute_dtype(device: torch.device, precision: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype for ``precision`` on ``device``; None means plain float32.

    ``auto``: bf16 on CUDA GPUs that support it, fp16 on older ones; bf16 on CPUs that multiply
    bf16 natively (AMX or AVX512-BF16: 1.4x faster per window of the demo model, masks within
    Dice 0.995 of float32, measured in docs/benchmarks.md); float32 elsewhere, where bf16 is
    emulated and slower. ``float32`` turns mixed precision off (bit-reproducible across runs).
    """
    if precision not in PRECISION_CHOICES:
        raise HermesError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISION_CHOICES)}")
    if precision == "float32" or device.type not in ("cuda", "cpu"):
        if precision == "bfloat16":
            raise HermesError(f"--precision bfloat16 is not supported on {device.type}; use float32 or auto")
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
        if precision == "bfloat16" and not supported:
            raise HermesError("--precision bfloat16: this GPU has no bf16 support; use auto (float16) or float32")
        return torch.bfloat16 if supported else torch.float16
    return torch.bfloat16 if precision == "bfloat16" or cpu_has_native_bf16() else None


def cpu_has_native_bf16() -> bool:
    """AMX tiles or AVX512-BF16, which oneDNN uses for bf16 convolutions."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


def precision_name(dtype: Optional[torch.dtype]) -> str:
    """``float32``, ``bfloat16`` or ``float16`` for a :func:`compute_dtype` result."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> ContextManager:
    """Mixed precision in ``dtype`` on ``device`` (from :func:`compute_dtype`), or nothing."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index or 0
        props = torch.cuda.get_device_properties(index)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB)"
    return device.type.upper()


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()
