"""Where the windows go and how they are weighted.

Window placement matches MONAI's ``sliding_window_inference`` (same scan interval, same
positions, same symmetric padding of axes shorter than the window), so the two engines can be
compared voxel for voxel in the benchmark.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def axis_starts(size: int, window: int, overlap: float) -> list[int]:
    """Start indices along one axis (``size >= window``)."""
    interval = int(window * (1 - overlap)) if size > window else window
    interval = max(interval, 1)
    count = math.ceil((size - window) / interval) + 1
    return sorted({min(i * interval, size - window) for i in range(count)})


def window_starts(shape: Sequence[int], window: Sequence[int], overlap: float) -> list[tuple[int, int, int]]:
    """All window corners, z-major (so windows that share a z-start are consecutive)."""
    zs, ys, xs = (axis_starts(n, w, overlap) for n, w in zip(shape, window))
    return [(z, y, x) for z in zs for y in ys for x in xs]


def lattice_box(box: Sequence[tuple[int, int]], shape: Sequence[int], window: Sequence[int],
                overlap: float) -> tuple[tuple[int, int], ...]:
    """The crop that runs exactly the windows touching ``box`` of the lattice laid over a volume of
    ``shape`` (half-open (start, stop) per axis).

    The crop is made of whole lattice windows, so sliding over it (:func:`axis_starts` on the
    crop) visits those windows at the same places, shifted. Every voxel of ``box`` is covered by
    the same windows as in a whole-volume run and gets bit for bit the same result: the crop only
    skips windows that do not reach ``box``. Voxels of the crop outside ``box`` are blended from
    fewer windows. Axes shorter than the window are kept whole (padded the same way in both runs).
    """
    out = []
    for (start, stop), n, w in zip(box, shape, window):
        if n <= w:
            out.append((0, int(n)))
            continue
        touching = [s for s in axis_starts(n, w, overlap) if s < stop and s + w > start]
        out.append((int(min(touching)), int(max(touching) + w)))
    return tuple(out)


def padding_for(shape: Sequence[int], window: Sequence[int]) -> list[tuple[int, int]]:
    """(before, after) padding per axis so that every axis is at least the window."""
    pads = []
    for n, w in zip(shape, window):
        missing = max(w - n, 0)
        pads.append((missing // 2, missing - missing // 2))
    return pads


def blending_weights(window: Sequence[int], mode: str = "gaussian", sigma_scale: float = 0.125) -> np.ndarray:
    """Importance map over a window, float32 [z, y, x].

    ``gaussian``: exp(-d^2 / 2 sigma^2) per axis with sigma = ``sigma_scale`` x window and d the
    distance to the window's centre ((w - 1) / 2), multiplied over the axes and floored at 1e-3
    so that edge voxels keep some weight. This is MONAI's importance map, so both engines blend
    identically. ``uniform``: all ones.
    """
    if mode == "uniform":
        return np.ones(tuple(window), dtype=np.float32)
    if mode != "gaussian":
        raise ValueError(f"unknown blending {mode!r}")
    profiles = []
    for w in window:
        d = np.arange(w, dtype=np.float64) - (w - 1) / 2.0
        profiles.append(np.exp(-(d ** 2) / (2.0 * (sigma_scale * w) ** 2)))
    weights = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    return np.maximum(weights, 1e-3).astype(np.float32)
