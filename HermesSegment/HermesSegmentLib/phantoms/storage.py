"""Stored geometry: acquisition spacing, axis order and flips, oblique grids."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import SimpleITK as sitk

from .atlas import rotation


def draw_spacing(rng: np.random.Generator, modality: str) -> np.ndarray:
    """Acquisition spacing (x, y, z) mm typical of the modality: in-plane 0.6-5, slices 1-10."""
    if modality == "CT":
        inplane = rng.uniform(0.6, 1.0) if rng.random() < 0.6 else rng.uniform(1.0, 2.0)
        slice_mm = rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0, 7.5, 10.0],
                              p=[.1, .1, .1, .15, .15, .15, .15, .05, .05])
    elif modality == "PET":
        inplane = rng.uniform(2.0, 5.0)
        slice_mm = rng.uniform(2.0, 5.0)
    else:
        inplane = rng.uniform(0.7, 2.0) if rng.random() < 0.85 else rng.uniform(2.0, 5.0)
        slice_mm = rng.choice([2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0])
    return np.array([inplane, inplane, slice_mm], float)


def draw_storage(rng: np.random.Generator) -> tuple[str, tuple[int, int, int], tuple[bool, bool, bool]]:
    """Storage orientation: kind, axis permutation (stored axis a = canonical axis perm[a]), flips."""
    kind = str(rng.choice(["LPS", "RAS", "permuted", "oblique"], p=[0.35, 0.35, 0.15, 0.15]))
    if kind == "RAS":
        return kind, (0, 1, 2), (True, True, False)
    if kind == "permuted":
        perm = [(0, 2, 1), (1, 0, 2), (2, 0, 1), (1, 2, 0)][int(rng.integers(4))]
        flips = rng.integers(0, 2, 3)
        return kind, perm, (bool(flips[0]), bool(flips[1]), bool(flips[2]))
    return kind, (0, 1, 2), (False, False, False)


#: Storage used when the caller fixes the orientation ("permuted": coronal-like, axes x, z, y).
STORAGE_FIXED = {
    "LPS": ("LPS", (0, 1, 2), (False, False, False)),
    "RAS": ("RAS", (0, 1, 2), (True, True, False)),
    "permuted": ("permuted", (0, 2, 1), (False, True, True)),
    "oblique": ("oblique", (0, 1, 2), (False, False, False)),
}


def to_storage(arr: np.ndarray, origin: np.ndarray, spacing: np.ndarray,
                perm: Sequence[int], flips: Sequence[bool]) -> sitk.Image:
    """Wraps a canonical LPS array ([z, y, x]) as an image stored with permuted/flipped axes.

    Stored index axis a runs along canonical axis perm[a], reversed where flips[a]; origin and
    direction are set so every voxel keeps its physical position.
    """
    size_c = np.array(arr.shape[::-1])
    out = np.transpose(arr, [2 - perm[2 - n] for n in range(3)])
    for a in range(3):
        if flips[a]:
            out = np.flip(out, axis=2 - a)
    direction = np.zeros((3, 3))
    new_origin = origin.astype(float).copy()
    for a in range(3):
        c = perm[a]
        direction[c, a] = -1.0 if flips[a] else 1.0
        if flips[a]:
            new_origin[c] += spacing[c] * (size_c[c] - 1)
    img = sitk.GetImageFromArray(np.ascontiguousarray(out))
    img.SetSpacing([float(spacing[c]) for c in perm])
    img.SetOrigin([float(v) for v in new_origin])
    img.SetDirection([float(v) for v in direction.ravel()])
    return img


def oblique(image: sitk.Image, label: sitk.Image, rng: np.random.Generator,
             background: float) -> tuple[sitk.Image, sitk.Image]:
    """Resamples image (linear) and label map (nearest) onto a grid tilted by up to ~8 degrees.

    The tilted grid keeps the size, spacing and centre of the original one, as an oblique
    acquisition with the same field of view would (corners outside the original are background),
    so the voxel count stays under the cap.
    """
    rot = rotation(rng, (8.0, 8.0, 8.0))
    spacing = np.array(image.GetSpacing())
    size = np.array(image.GetSize())
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2.0).tolist()))
    ref = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    ref.SetSpacing(spacing.tolist())
    ref.SetOrigin((centre - rot @ (spacing * (size - 1) / 2.0)).tolist())
    ref.SetDirection(rot.ravel().tolist())
    img = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, background, image.GetPixelID())
    lab = sitk.Resample(label, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    return img, lab
