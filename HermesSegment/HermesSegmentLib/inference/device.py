"""Device policy: which device to run on, and mixed precision there."""

from __future__ import annotations

import contextlib
import logging
from typing import ContextManager, Optional, Sequence

import torch

from ..errors import HermesError

log = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def select_device(requested: str = "auto") -> torch.device:
    """``auto`` takes CUDA, else the CPU; Apple MPS only when asked for (some 3D operators fail there,
    as SlicerTotalSegmentator found, so it is never picked silently). Asking for a device that is not
    there is a user mistake with a one-line explanation, not a silent fallback."""
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


# Activation memory of one window, per voxel and per base channel, in bytes: Hermes-R (base 32) on the
# CPU takes 2.95 GB per 128^3 window in float32 and 1.56 GB in bf16 autocast
# (benchmarks/memory_hermes_r.py, docs/benchmarks.md).
_ACTIVATION_BYTES = {"float32": 2.95 * 2**30 / (128**3 * 32), "16-bit": 1.56 * 2**30 / (128**3 * 32)}
# Above this many GB per window a CPU runs one window at a time: Hermes-R is as fast at batch 1 as at
# 2 on the CPU (issue 16) with half the memory; small models convolve one-window batches slower.
_CPU_LARGE_WINDOW_GB = 1.0


def window_memory_gb(window_zyx: Sequence[int], base_channels: int, dtype: Optional[torch.dtype]) -> float:
    """Estimated activation memory of one window of a Hermes network, in GB (see _ACTIVATION_BYTES)."""
    voxels = int(window_zyx[0]) * int(window_zyx[1]) * int(window_zyx[2])
    per_voxel = _ACTIVATION_BYTES["float32" if dtype is None else "16-bit"]
    return voxels * base_channels * per_voxel / 2**30


def available_memory_gb(device: torch.device) -> Optional[float]:
    """Memory free for a run on ``device`` in GB (CUDA: the GPU's free memory; CPU: the OS's
    MemAvailable on Linux); None when unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] / 2**30
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as stream:
                line = next(line for line in stream if line.startswith("MemAvailable:"))
            return int(line.split()[1]) / 2**20
        except (OSError, StopIteration, ValueError):
            return None
    return None


def choose_batch_size(device: torch.device, per_window_gb: float, available_gb: Optional[float]) -> int:
    """Windows per forward pass when none was asked for.

    CPU: one for large models (>= 1 GB per window: as fast as two, half the memory), else two when
    they fit in half the available memory. GPU: the largest of 8, 4, 2, 1 that fits in 60% of the
    free memory. Unknown memory: two (one on the CPU for large models).
    """
    if device.type == "cpu":
        if per_window_gb >= _CPU_LARGE_WINDOW_GB:
            return 1
        return 2 if available_gb is None or 2 * per_window_gb <= 0.5 * available_gb else 1
    if available_gb is None:
        return 2
    return next((b for b in (8, 4, 2) if b * per_window_gb <= 0.6 * available_gb), 1)


def is_out_of_memory(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()
