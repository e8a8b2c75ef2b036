"""Which windows a run needs: only those near the asked targets, with the full run's masks there.

A full run visits every window of the lattice (:func:`windows.window_starts`). Most of them see
no asked target: asking for one kidney on an abdominal CT needs about a quarter of them. The
plan, in two passes over the same lattice:

1. Coverage: a subset of the lattice's windows that covers every voxel (:func:`covering_corners`:
   per axis, the fewest lattice starts whose windows leave no gap; at overlap 0.5 every other
   start). Where their logits say "maybe" (probability >= a quarter of the threshold) an asked
   target is *found*.
2. Windows near what was found (:func:`corners_near`): every lattice window that reaches a found
   voxel or comes within ``margin`` voxels of one; the coverage windows among them are not run
   again (their logits were kept).

Every voxel within ``margin`` of a found voxel is then blended from exactly the windows the full
run gives it, in the same order, so its probability is the full run's, bit for bit. Voxels
farther away are reported as background; the full run's mask differs only where it finds the
target farther than ``margin`` from anything the coverage pass saw (measured in docs/benchmarks.md:
Dice >= 0.999 against the full run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .windows import axis_starts

Corner = tuple[int, int, int]


@dataclass
class WindowPlan:
    """Which windows :func:`inference.predict_volume` runs, and afterwards how many it ran.

    ``near_targets``: None runs every window of the lattice; a probability p runs the coverage
    windows, then only the windows near a voxel where some output reached p there. After the run,
    ``windows``: windows run; ``lattice``: windows of a full run.
    """

    near_targets: Optional[float] = None
    windows: int = 0
    lattice: int = 0


def covering_starts(size: int, window: int, overlap: float) -> list[int]:
    """The fewest lattice starts along an axis whose windows cover [0, size) with no gap.

    Greedy: the first start, then each time the farthest start that still touches the previous
    window's end. The last lattice start (size - window) always ends the list.
    """
    starts = axis_starts(size, window, overlap)
    chosen = [starts[0]]
    while chosen[-1] + window < size:
        chosen.append(max(s for s in starts if s <= chosen[-1] + window))
    return chosen


def covering_corners(shape: Sequence[int], window: Sequence[int], overlap: float) -> list[Corner]:
    """Lattice windows that cover every voxel of ``shape`` (each axis >= its window), z-major."""
    zs, ys, xs = (covering_starts(n, w, overlap) for n, w in zip(shape, window))
    return [(z, y, x) for z in zs for y in ys for x in xs]


def corners_near(found: np.ndarray, corners: Sequence[Corner], window: Sequence[int], margin: int) -> list[Corner]:
    """The corners whose window, grown by ``margin`` voxels on every side, holds a found voxel.

    ``found``: bool over the (padded) volume the corners index. Keeps ``corners``' order.
    """
    dz, dy, dx = window
    near = []
    for z, y, x in corners:
        box = found[max(z - margin, 0):z + dz + margin, max(y - margin, 0):y + dy + margin,
                    max(x - margin, 0):x + dx + margin]
        if box.any():
            near.append((z, y, x))
    return near
