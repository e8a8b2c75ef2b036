"""Connected components on the input grid: drop small islands, keep the largest component, fill holes.

The operations run on the mask's bounding box (plus one voxel of background), so their cost
follows the structure's size, not the volume's. Order: remove islands under ``min_island_ml``,
keep the largest component, fill holes -- filling last, so holes are closed in what is kept.
Foreground connectivity is 26 (a diagonal touch joins two parts); hole filling uses the
complementary 6-connectivity for the background, so the two never leak through each other.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from ..mask import bounding_box
from .options import PostprocessOptions

_FOREGROUND_26 = np.ones((3, 3, 3), dtype=bool)


def apply(mask: np.ndarray, spacing_zyx: Sequence[float], options: PostprocessOptions) -> np.ndarray:
    """Return the cleaned-up copy of ``mask`` (bool [z, y, x]; ``spacing_zyx`` in mm)."""
    out = np.array(mask, dtype=bool, copy=True)
    if not options.active or not out.any():
        return out
    # One voxel of background around the mask keeps hole filling right: a cavity is a background
    # region that does not reach the crop's border, and the margin lets the outside reach it.
    box = bounding_box(out, margin=1)
    crop = out[box]
    labels, count = ndimage.label(crop, structure=_FOREGROUND_26)
    if count:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        keep = sizes > 0
        if options.min_island_ml:
            voxel_ml = float(np.prod(spacing_zyx)) / 1000.0
            keep &= sizes * voxel_ml >= options.min_island_ml
        if options.keep_largest and keep.any():
            largest = int(np.argmax(np.where(keep, sizes, 0)))
            keep[:] = False
            keep[largest] = True
        crop = keep[labels]
    if options.fill_holes:
        crop = ndimage.binary_fill_holes(crop)
    out[box] = crop
    return out
