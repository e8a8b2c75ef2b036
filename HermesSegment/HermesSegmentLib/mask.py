"""TargetMask: one target's binary mask on the input grid, stored as its bounding-box crop."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import SimpleITK as sitk


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

    @property
    def voxels(self) -> int:
        return int(np.count_nonzero(self.array))

    def volume_ml(self, spacing: Sequence[float]) -> float:
        """Volume in mL for a voxel ``spacing`` in mm (any axis order)."""
        return self.voxels * float(np.prod(spacing)) / 1000.0

    def full(self, shape: Sequence[int]) -> np.ndarray:
        """The mask on the whole grid ``shape`` ([z, y, x]) as bool."""
        out = np.zeros(tuple(shape), dtype=bool)
        out[self.slices] = self.array
        return out

    @property
    def slices(self) -> Tuple[slice, slice, slice]:
        """Where ``array`` lies in the full grid."""
        return tuple(slice(o, o + n) for o, n in zip(self.offset_zyx, self.array.shape))

    def tight_box(self) -> Tuple[Tuple[int, int], ...] | None:
        """Inclusive ((z0, z1), (y0, y1), (x0, x1)) full-grid box of the True voxels, or None."""
        box = []
        for axis in range(3):
            other = tuple(a for a in range(3) if a != axis)
            hits = np.flatnonzero(self.array.any(axis=other)) if self.array.size else []
            if len(hits) == 0:
                return None
            box.append((self.offset_zyx[axis] + int(hits[0]), self.offset_zyx[axis] + int(hits[-1])))
        return tuple(box)


def image_on_grid(array: np.ndarray, reference: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(reference.GetOrigin())
    image.SetSpacing(reference.GetSpacing())
    image.SetDirection(reference.GetDirection())
    return image


def check_on_grid(masks: Sequence[TargetMask], reference: sitk.Image) -> Tuple[int, int, int]:
    shape = tuple(reference.GetSize()[::-1])
    for m in masks:
        if any(o < 0 or o + n > s for o, n, s in zip(m.offset_zyx, m.array.shape, shape)) and m.array.size:
            raise ValueError(f"mask {m.key!r} (offset {m.offset_zyx}, shape {m.array.shape}) "
                             f"lies outside the reference grid {shape}")
    return shape
