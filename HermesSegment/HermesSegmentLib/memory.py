"""Out of memory, recognised wherever it happens, told as one line with the size and what to do.

Memory failures reach us in many forms: Python's ``MemoryError`` (numpy's names the size:
"Unable to allocate 1.50 GiB for an array with shape ..."), PyTorch's allocators ("DefaultCPUAllocator:
can't allocate memory: you tried to allocate N bytes", CUDA's ``OutOfMemoryError`` "Tried to allocate
2.00 GiB"), oneDNN ("could not create a primitive", its usual failure when a convolution's workspace
cannot be allocated), ITK ("Failed to allocate memory for image", ``std::bad_alloc``). Messages
were collected from the public issue threads of TotalSegmentator, MONAI and nnU-Net and from ITK's
and PyTorch's sources.
"""

from __future__ import annotations

import re
from typing import Optional

from .errors import HermesError

_MARKERS = (
    "out of memory", "can't allocate memory", "cannot allocate memory", "failed to allocate",
    "could not create a primitive", "bad_alloc", "unable to allocate", "memoryerror", "not enough memory",
)
_SIZE_UNITS = {"b": 1, "bytes": 1, "kib": 2**10, "kb": 2**10, "mib": 2**20, "mb": 2**20, "gib": 2**30,
               "gb": 2**30, "tib": 2**40, "tb": 2**40}
#: The README's advice (section "Troubleshooting", "Out of memory"), in one clause.
ADVICE = ("try --batch-size 1, --precision bfloat16, fewer targets at a time, a machine with more memory, "
          "or a GPU or a server (see the README, 'Out of memory')")


def is_memory_error(error: BaseException) -> bool:
    """True for the memory failures of Python, numpy, PyTorch (CPU, CUDA, oneDNN) and ITK."""
    if isinstance(error, MemoryError):
        return True
    try:
        import torch

        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # reading and writing work without torch
        pass
    text = f"{type(error).__name__}: {error}".lower()
    return any(marker in text for marker in _MARKERS)


def requested_bytes(error: BaseException) -> Optional[int]:
    """The allocation that failed, in bytes, when the message names it."""
    text = str(error)
    match = re.search(r"tried to allocate (\d+) bytes", text)
    if match:
        return int(match.group(1))
    match = re.search(r"(?:allocate|Tried to allocate)\s+([\d.]+)\s*([KMGT]?i?B|bytes)\b", text, re.IGNORECASE)
    if match:
        return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    return None


def human_size(size: int) -> str:
    """``1.5 GiB``, ``600 MiB``: binary units, as the allocators print them."""
    if size >= 2**30:
        return f"{size / 2**30:.1f} GiB"
    if size >= 2**20:
        return f"{size / 2**20:.0f} MiB"
    return f"{size / 2**10:.0f} KiB"


def out_of_memory(stage: str, error: BaseException, size: Optional[int] = None) -> HermesError:
    """The one-line error for a memory failure while ``stage`` ("reading", "resampling", "running the
    network", "writing", ...); ``size`` (bytes) when the caller knows better than the message."""
    size = size if size is not None else requested_bytes(error)
    what = f" (allocating {human_size(size)})" if size else ""
    return HermesError(f"out of memory while {stage}{what}; {ADVICE}")
