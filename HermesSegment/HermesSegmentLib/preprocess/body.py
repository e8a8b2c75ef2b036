"""The body in model space: its bounding box (the crop that skips windows of air) and its sagittal midline."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from ..mask import bounding_box

# Body threshold for CT in HU: above air and lung parenchyma's darkest parts, below fat (-100).
_CT_BODY_HU = -500.0
# Margin added around the body mask, in mm, so that the skin and a bit of air stay in the crop.
_BODY_MARGIN_MM = 10.0


def find_body(array: np.ndarray, spacing_zyx: Sequence[float], modality: Optional[str]):
    """(box, midline_x) of the body in ``array`` (raw intensities); (None, None) if none is found.

    Foreground = above a modality threshold; computed on a 3 mm-ish coarse grid (block max) so
    the labelling stays cheap. ``box``: half-open ((z0, z1), (y0, y1), (x0, x1)) around the
    components of at least 10% of the largest (the largest alone would drop one leg below the
    pelvis), plus a 10 mm margin. ``midline_x``: see :func:`_midline_x`.
    """
    from scipy import ndimage

    if modality == "CT":
        threshold = _CT_BODY_HU
    else:
        p1, p99 = np.percentile(strided_view(array), [1, 99])
        threshold = p1 + 0.05 * (p99 - p1)
    step = np.maximum(1, np.round(3.0 / np.asarray(spacing_zyx, dtype=float))).astype(int)
    coarse = _block_any(array, threshold, step)
    labels, count = ndimage.label(coarse, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return None, None
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= 0.1 * sizes.max()) + 1
    body = np.isin(labels, keep)
    coarse_box = bounding_box(body)
    assert coarse_box is not None  # the body has at least one component
    box = []
    for axis, extent in enumerate(coarse_box):
        margin = int(math.ceil(_BODY_MARGIN_MM / spacing_zyx[axis]))
        start = max(0, extent.start * step[axis] - margin)
        stop = min(array.shape[axis], extent.stop * step[axis] + margin)
        box.append((int(start), int(stop)))
    return tuple(box), _midline_x(body, int(step[2]))


def _midline_x(body: np.ndarray, step_x: int) -> Optional[float]:
    """The body's sagittal midline as a full-grid x index, from its coarse mask [z, y, x].

    In each axial plane, the centre of the largest 2D component's right-left extent (the trunk:
    arms and the table are separate components there), where that component stays clear of the
    field of view's right and left edges; the median over those planes. None when fewer than a
    quarter of the body's planes qualify (a body cut by the field of view has no known centre).
    """
    from scipy import ndimage

    centres, planes = [], 0
    for plane in body:
        if not plane.any():
            continue
        planes += 1
        labels, _ = ndimage.label(plane)
        trunk = labels == 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
        columns = np.flatnonzero(trunk.any(axis=0))
        if columns[0] > 0 and columns[-1] < plane.shape[1] - 1:
            centres.append((columns[0] + columns[-1] + 1) * step_x / 2.0 - 0.5)
    if not centres or len(centres) < planes / 4:
        return None
    return float(np.median(centres))


def strided_view(array: np.ndarray, target: int = 2_000_000) -> np.ndarray:
    step = max(1, int(round((array.size / target) ** (1 / 3))))
    return array[::step, ::step, ::step]


def _block_any(array: np.ndarray, threshold: float, step: np.ndarray) -> np.ndarray:
    """Coarse boolean grid: True where any voxel of the block is above ``threshold``.

    Slab by slab along z so that the full-size boolean temporary never exists.
    """
    sz, sy, sx = (int(s) for s in step)
    nz, ny, nx = (-(-n // s) for n, s in zip(array.shape, step))
    coarse = np.zeros((nz, ny, nx), dtype=bool)
    for cz in range(nz):
        slab = array[cz * sz:(cz + 1) * sz] > threshold
        slab = np.pad(slab, ((0, sz - slab.shape[0]), (0, ny * sy - slab.shape[1]),
                             (0, nx * sx - slab.shape[2])))
        coarse[cz] = slab.reshape(sz, ny, sy, nx, sx).any(axis=(0, 2, 4))
    return coarse
