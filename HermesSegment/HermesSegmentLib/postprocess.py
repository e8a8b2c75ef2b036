"""Per-target cleanup: the side of the body a paired organ lies on; small islands, largest
component, holes.

One piece: an organ the vocabulary marks ``single_piece`` (liver, spleen, one kidney, one lung,
heart, ...: one connected piece of tissue in every patient) keeps its largest component by
default, whatever ``keep_largest`` (which applies to every target) says. A false-positive blob
elsewhere in the body (a "left kidney" in the spleen) is then dropped. Tubes (aorta, oesophagus),
vertebrae and lesions are not marked: a coarse prediction may break a tube into parts that are
all right. Measured with the demo model on held-out phantoms (docs/experiments.md, section 1c).
The rule trusts size: where a model finds a false blob larger than the organ, the blob is kept.

Side: one of a pair of organs (left/right lung, kidney, ...: the vocabulary's laterality) is kept
on its side of the body's midline, up to ``SIDE_TOLERANCE_MM`` across it. This runs on the
model-space probabilities, before they are mapped back (see :func:`keep_to_side`). A small model
that has learnt "lung" but not which one (the demo model: both lung queries return both lungs)
then gives the right lung; a model that already tells them apart loses nothing.

The operations run on the mask's bounding box (plus one voxel of background), so their cost
follows the structure's size, not the volume's. Order: remove islands under ``min_island_ml``,
keep the largest component, fill holes -- filling last, so holes are closed in what is kept.
Foreground connectivity is 26 (a diagonal touch joins two parts); hole filling uses the
complementary 6-connectivity for the background, so the two never leak through each other.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from . import vocabulary

_FOREGROUND_26 = np.ones((3, 3, 3), dtype=bool)
# How far a left organ may reach across the midline (and a right one): the lungs meet at the
# anterior junction line, and the midline is estimated from the body's outline.
SIDE_TOLERANCE_MM = 15.0


@dataclass
class PostprocessOptions:
    """``keep_largest``: keep the largest 26-connected component only.
    ``fill_holes``: fill cavities enclosed in 3D. ``min_island_ml``: drop components smaller
    than this volume in mL (None: keep all). ``active``: whether any of these three is on (they
    run on the input grid, after mapping back).
    ``side_constraint``: keep a left (right) organ on the left (right) of the body's midline;
    skipped where the midline is unknown (imaging.ModelSpaceImage.midline_x).
    ``single_piece``: keep the largest component of targets the vocabulary marks as one piece
    (see :meth:`for_target`)."""

    keep_largest: bool = False
    fill_holes: bool = False
    min_island_ml: Optional[float] = None
    side_constraint: bool = True
    single_piece: bool = True

    @property
    def active(self) -> bool:
        return self.keep_largest or self.fill_holes or bool(self.min_island_ml)

    def for_target(self, target: str) -> "PostprocessOptions":
        """The options that apply to ``target`` (a vocabulary key): ``keep_largest`` turned on for
        a one-piece organ when ``single_piece`` is set."""
        if self.single_piece and not self.keep_largest and vocabulary.target(target).single_piece:
            return replace(self, keep_largest=True)
        return self


def keep_to_side(probabilities: np.ndarray, side: str, midline_x: float, offset_x: int, spacing_x: float,
                 tolerance_mm: float = SIDE_TOLERANCE_MM) -> None:
    """Zero, in place, the model-space ``probabilities`` ([z, y, x], x toward the patient's left,
    the crop's first x being ``offset_x`` of the full grid) that lie more than ``tolerance_mm``
    across the midline (x index ``midline_x``) from ``side`` (``"left"`` or ``"right"``)."""
    x = np.arange(probabilities.shape[2]) + offset_x
    reach = tolerance_mm / spacing_x
    wrong = x < midline_x - reach if side == "left" else x > midline_x + reach
    probabilities[..., wrong] = 0


def apply(mask: np.ndarray, spacing_zyx: Sequence[float], options: PostprocessOptions) -> np.ndarray:
    """Return the cleaned-up copy of ``mask`` (bool [z, y, x]; ``spacing_zyx`` in mm)."""
    out = np.array(mask, dtype=bool, copy=True)
    if not options.active or not out.any():
        return out
    box = _padded_bbox(out)
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


def _padded_bbox(mask: np.ndarray) -> tuple:
    """Slices of the bounding box of ``mask``'s True voxels, one voxel larger where possible.

    The background margin keeps hole filling right: a cavity is a background region that does
    not reach the crop's border, and the margin makes the outside reach it.
    """
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(0, int(hits[0]) - 1), min(mask.shape[axis], int(hits[-1]) + 2)))
    return tuple(box)
