"""TargetMask: one target's binary mask on the input grid, stored as its bounding-box crop; box and grid helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

Box = Tuple[slice, ...]


def bounding_box(*masks: np.ndarray, margin: int = 0) -> Optional[Box]:
    """Slices of the smallest box holding every True voxel of ``masks`` (same shape, any number of
    axes), grown by ``margin`` voxels and clipped to the array; None when they are all empty.

    Works on one projection per axis, so no union of the masks is ever allocated.
    """
    shape = masks[0].shape
    box = []
    for axis in range(len(shape)):
        other = tuple(a for a in range(len(shape)) if a != axis)
        occupied = np.logical_or.reduce([mask.any(axis=other) for mask in masks]) if len(masks) > 1 \
            else masks[0].any(axis=other)
        hits = np.flatnonzero(occupied)
        if hits.size == 0:
            return None
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, shape[axis])))
    return tuple(box)


@dataclass
class TargetMask:
    """One target's binary mask on the input grid, stored as its bounding-box crop.

    ``key``: vocabulary target key (e.g. "liver"); ``name``: display name; ``color``: (r, g, b)
    0-255; ``terminology``: Slicer TerminologyEntry string ("context~cat~type~modifier~..."), or
    "" when unknown; ``offset_zyx``: index of ``array[0, 0, 0]`` in the input grid;
    ``array``: bool [z, y, x] crop (shape (0, 0, 0) when the target was not found).
    """

    key: str
    name: str
    color: Tuple[int, int, int]
    terminology: str
    offset_zyx: Tuple[int, int, int]
    array: np.ndarray

    @classmethod
    def cropped(cls, array: np.ndarray, offset_zyx: Sequence[int] = (0, 0, 0), *, key: str = "", name: str = "",
                color: Tuple[int, int, int] = (128, 128, 128), terminology: str = "") -> TargetMask:
        """The True voxels of ``array`` (bool [z, y, x] whose first voxel lies at ``offset_zyx`` of the
        grid), kept as their bounding box."""
        box = bounding_box(array) if array.size else None
        if box is None:
            return cls(key, name, color, terminology, (0, 0, 0), np.zeros((0, 0, 0), dtype=bool))
        offset = tuple(int(o + b.start) for o, b in zip(offset_zyx, box))
        return cls(key, name, color, terminology, (offset[0], offset[1], offset[2]), np.ascontiguousarray(array[box]))

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.array))

    def volume_ml(self, spacing: Sequence[float]) -> float:
        """Volume in mL for a voxel ``spacing`` in mm (any axis order)."""
        return self.voxels * float(np.prod(spacing)) / 1000.0

    @property
    def slices(self) -> Box:
        """Where ``array`` lies in the full grid."""
        return tuple(slice(o, o + n) for o, n in zip(self.offset_zyx, self.array.shape))

    def bbox(self) -> Optional[Box]:
        """Slices of the full grid holding the True voxels (tighter than :attr:`slices` after a
        cleanup), or None for an empty mask."""
        box = bounding_box(self.array) if self.array.size else None
        if box is None:
            return None
        return tuple(slice(o + b.start, o + b.stop) for o, b in zip(self.offset_zyx, box))

    def full(self, shape: Sequence[int]) -> np.ndarray:
        """The mask on the whole grid ``shape`` ([z, y, x]) as bool."""
        out = np.zeros(tuple(shape), dtype=bool)
        out[self.slices] = self.array
        return out

    def image(self, reference: sitk.Image) -> sitk.Image:
        """The mask on ``reference``'s whole grid as a 0/1 UInt8 image with its geometry."""
        return image_on_grid(self.full(reference.GetSize()[::-1]).view(np.uint8), reference)


def image_on_grid(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    """``array`` ([z, y, x], the shape of ``reference``) as an image with ``reference``'s geometry."""
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(reference.GetOrigin())
    image.SetSpacing(reference.GetSpacing())
    image.SetDirection(reference.GetDirection())
    return image


def check_on_grid(masks: Sequence[TargetMask], reference: sitk.Image) -> Tuple[int, int, int]:
    """The [z, y, x] shape of ``reference``; ``ValueError`` when a mask lies outside it."""
    shape = tuple(int(n) for n in reference.GetSize()[::-1])
    for m in masks:
        if any(o < 0 or o + n > s for o, n, s in zip(m.offset_zyx, m.array.shape, shape)) and m.array.size:
            raise ValueError(f"mask {m.key!r} (offset {m.offset_zyx}, shape {m.array.shape}) "
                             f"lies outside the reference grid {shape}")
    return (shape[0], shape[1], shape[2])
