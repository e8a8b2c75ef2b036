"""The benchmarks' CT: a generated torso phantom on an exact clinical grid, with its true labels."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HermesSegment"))

from HermesSegmentLib.phantoms import generate_case


def ct_phantom(size: Sequence[int] = (512, 512, 300), spacing: Sequence[float] = (0.8, 0.8, 2.5), seed: int = 7,
               max_voxels: int | None = None) -> tuple[sitk.Image, sitk.Image, dict[str, int]]:
    """(int16 CT in HU, uint8 label map, target key -> label value) on a grid of ``size`` voxels
    (x, y, z) at ``spacing`` mm, LPS, centred on the phantom (a whole torso filling about half the
    field of view).

    The phantom is rendered with at most ``max_voxels`` voxels (default: twice the grid's) and
    resampled onto the grid (linear for the image, nearest neighbour for the labels): a coarser
    rendering is several times faster to make and costs the same to segment.
    """
    budget = int(np.prod(size)) * 2 if max_voxels is None else int(max_voxels)
    image, labels, info = generate_case(seed, "CT", spacing=tuple(spacing), orientation="LPS", max_voxels=budget,
                                        supersample=False)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    origin = centre - (np.array(size) - 1) / 2 * np.array(spacing)
    grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    grid.SetOrigin(tuple(float(v) for v in origin))
    grid.SetSpacing(tuple(float(s) for s in spacing))
    image = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkInt16)
    labels = sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return image, labels, dict(info["labels"])
