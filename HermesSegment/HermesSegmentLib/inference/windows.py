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
    """The smallest box holding ``box`` that is a union of whole windows of the lattice laid over
    a volume of ``shape`` (half-open (start, stop) per axis).

    Sliding over the returned crop visits exactly those lattice windows, at the same places
    (:func:`axis_starts` on the crop gives the lattice's starts, shifted): a body crop then
    changes which windows run, not where they fall, and every voxel that no skipped window
    reaches gets exactly the whole-volume result: all but a band of about ``window x overlap``
    inside each crop edge that is not an edge of the volume (up to a window next to the volume's
    last, clamped window). Axes shorter than the window are kept whole (padded the same way in
    both runs).
    """
    out = []
    for (start, stop), n, w in zip(box, shape, window):
        if n <= w:
            out.append((0, int(n)))
            continue
        starts = axis_starts(n, w, overlap)
        first = max(s for s in starts if s <= start)
        last = max(first, min(s for s in starts if s + w >= stop))
        out.append((int(first), int(last + w)))
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
