"""Back to the input grid: model-space probabilities resampled linearly and thresholded, as a bounding-box crop.

Design decision (resample probabilities, then threshold): docs/architecture.md.
"""

from __future__ import annotations

import concurrent.futures
import os
from typing import Literal, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from ..mask import TargetMask, bounding_box
from ..preprocess.model_space import ModelSpaceImage, physical_corners

# Threads for the last step of mapping a mask back to an axis-aligned input grid (memory-bound:
# more than four rarely helps).
_MAPPING_THREADS = min(4, os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------
# Back to the input grid


def reference_geometry(image: sitk.Image) -> sitk.Image:
    """A zero UInt8 image with ``image``'s grid (size, origin, spacing, direction).

    Holds the input geometry for the outputs after the input voxels are dropped; 1 byte/voxel.
    """
    reference = sitk.Image(image.GetSize(), sitk.sitkUInt8)
    reference.SetOrigin(image.GetOrigin())
    reference.SetSpacing(image.GetSpacing())
    reference.SetDirection(image.GetDirection())
    return reference


def from_model_space(
    values: np.ndarray,
    model: ModelSpaceImage,
    reference: sitk.Image,
    *,
    interpolation: Literal["linear", "nearest"] = "linear",
) -> np.ndarray:
    """Resample a model-space array (shape of ``model.array``) onto the input grid.

    Returns an array of ``values``' dtype (bool included), [z, y, x] of ``reference``; 0 outside
    the crop.
    Full-volume sized: for masks prefer :func:`probabilities_to_mask` (bounded by the target).
    """
    interpolator = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}[interpolation]
    # SimpleITK has no bool pixel type: labels travel as uint8 and come back as bool.
    numeric = values.view(np.uint8) if values.dtype == bool else values
    resampled = sitk.Resample(model.crop_image(numeric), reference, sitk.Transform(), interpolator, 0.0)
    out = sitk.GetArrayFromImage(resampled)
    return out.astype(bool) if values.dtype == bool else out


def probabilities_to_mask(
    prob_model_space: np.ndarray,
    model: ModelSpaceImage,
    reference: sitk.Image,
    threshold: float = 0.5,
) -> TargetMask:
    """Threshold a target's model-space probabilities on the input grid, as a bounding-box crop
    (a :class:`TargetMask` with no target named yet).

    ``prob_model_space``: shape of ``model.array``; float in [0, 1] or uint8 quantised 0..255
    (then ``threshold`` is scaled by 255). Linear interpolation, then ``p >= threshold``.
    Only the input sub-region under the model-space box of ``p >= threshold`` (plus one model
    voxel) is resampled.
    """
    cut = threshold * 255.0 if prob_model_space.dtype == np.uint8 else threshold
    # One model voxel of margin: a linearly interpolated value >= cut needs a corner >= cut.
    box = bounding_box(prob_model_space >= cut, margin=1)
    empty = TargetMask.cropped(np.zeros((0, 0, 0), dtype=bool))
    if box is None:
        return empty
    lo = [b.start for b in box]
    sub = np.ascontiguousarray(prob_model_space[box], dtype=np.float32)
    sub_image = sitk.GetImageFromArray(sub)
    offset_xyz = np.asarray(model.crop_offset_zyx[::-1]) + lo[::-1]
    spacing_xyz = np.asarray(model.spacing_zyx[::-1])
    sub_image.SetOrigin(tuple(np.asarray(model.origin_xyz) + offset_xyz * spacing_xyz))
    sub_image.SetSpacing(tuple(spacing_xyz))

    start, stop = _input_box(sub_image, reference)
    if np.any(stop <= start):
        return empty
    axes = _signed_permutation(reference.GetDirection())
    if axes is not None:  # the input grid is axis-aligned: separable interpolation, no ITK pass
        mask = _separable_threshold(sub, sub_image, reference, start, stop, axes, cut)
    else:
        origin = reference.TransformIndexToPhysicalPoint([int(v) for v in start])
        # A view does not keep its image alive: hold the resampled image while the view is read.
        resampled = sitk.Resample(sub_image, [int(v) for v in stop - start], sitk.Transform(), sitk.sitkLinear,
                                  origin, reference.GetSpacing(), reference.GetDirection(), 0.0, sitk.sitkFloat32)
        mask = sitk.GetArrayViewFromImage(resampled) >= cut
    return TargetMask.cropped(mask, tuple(int(v) for v in start[::-1]))


def _signed_permutation(direction: Sequence[float]) -> Optional[list]:
    """For a direction matrix that only permutes and flips axes: [(model axis, sign)] per input
    axis (x, y, z); None for an oblique one."""
    matrix = np.asarray(direction, dtype=float).reshape(3, 3)
    axes = []
    for column in matrix.T:  # column k: the physical direction of input axis k
        j = int(np.argmax(np.abs(column)))
        if abs(abs(column[j]) - 1.0) > 1e-6 or np.abs(np.delete(column, j)).max() > 1e-6:
            return None
        axes.append((j, float(np.sign(column[j]))))
    return axes if sorted(j for j, _ in axes) == [0, 1, 2] else None


def _separable_threshold(sub: np.ndarray, sub_image: sitk.Image, reference: sitk.Image,
                         start: np.ndarray, stop: np.ndarray, axes: list, cut: float) -> np.ndarray:
    """``sitk.Resample(sub_image, ..., sitkLinear) >= cut`` on the input box [start, stop) when
    the input grid is axis-aligned, as three 1D linear interpolations (about 10x faster).

    Points within half a voxel of ``sub``'s edge take the edge value, points beyond get 0, as
    ITK's linear interpolator does. The axes that grow least go first, so the intermediate
    arrays stay small; the last, largest step runs in slabs on a few threads and thresholds as it
    goes, so no float32 array of the whole box is made (a lung's box on a 512 x 512 x 300 CT is
    50 M voxels) and the temporaries stay in cache. Returns bool [z, y, x] of the input box.
    """
    ref_origin, ref_spacing = np.asarray(reference.GetOrigin()), np.asarray(reference.GetSpacing())
    sub_origin, sub_spacing = np.asarray(sub_image.GetOrigin()), np.asarray(sub_image.GetSpacing())

    def plan(k: int):
        """(numpy axis, low index, high index, weight, inside) of the interpolation along input axis k."""
        j, sign = axes[k]
        index = np.arange(start[k], stop[k], dtype=np.float64)
        coordinate = (ref_origin[j] + sign * ref_spacing[k] * index - sub_origin[j]) / sub_spacing[j]
        axis = 2 - j  # numpy axis of model axis j
        n = sub.shape[axis]
        low = np.floor(coordinate)
        shape = [1, 1, 1]
        shape[axis] = len(index)
        return (axis, np.clip(low, 0, n - 1).astype(np.intp), np.clip(low + 1, 0, n - 1).astype(np.intp),
                (coordinate - low).astype(np.float32).reshape(shape),
                ((coordinate >= -0.5) & (coordinate <= n - 0.5)).reshape(shape))

    def interpolate(values: np.ndarray, axis: int, i0, i1, weight, inside) -> np.ndarray:
        low_values = np.take(values, i0, axis=axis)
        high_values = np.take(values, i1, axis=axis)
        high_values -= low_values
        high_values *= weight
        low_values += high_values
        low_values *= inside
        return low_values

    steps = sorted(range(3), key=lambda k: sub_spacing[axes[k][0]] / ref_spacing[k])
    values = sub
    order = [0, 0, 0]  # numpy axis of `values` (model order) -> input axis it now holds
    for k in steps[:2]:
        axis, *rest = plan(k)
        values = interpolate(values, axis, *rest)
        order[axis] = k
    axis, i0, i1, weight, inside = plan(steps[2])
    order[axis] = steps[2]
    shape = list(values.shape)
    shape[axis] = len(i0)
    mask = np.empty(shape, dtype=bool)
    along = 0 if axis != 0 else 1  # slabs along the outermost other axis: contiguous pieces
    width = max(1, (1 << 20) // max(1, int(np.prod(shape)) // shape[along]))  # ~1 M voxels per slab

    def slab(first: int) -> None:
        part = [slice(None)] * 3
        part[along] = slice(first, first + width)
        np.greater_equal(interpolate(values[tuple(part)], axis, i0, i1, weight, inside), cut, out=mask[tuple(part)])

    firsts = range(0, shape[along], width)
    if len(firsts) == 1:
        slab(0)
    else:
        with concurrent.futures.ThreadPoolExecutor(min(_MAPPING_THREADS, len(firsts))) as pool:
            list(pool.map(slab, firsts))  # numpy releases the GIL inside take and the ufuncs
    # numpy axis a of `mask` holds input axis order[a]; the result wants input z, y, x.
    return np.transpose(mask, [order.index(k) for k in (2, 1, 0)])


def _input_box(sub_image: sitk.Image, reference: sitk.Image) -> Tuple[np.ndarray, np.ndarray]:
    """Half-open xyz index box of ``reference`` covering ``sub_image``'s physical extent."""
    corners = physical_corners(sub_image)
    index = np.array([reference.TransformPhysicalPointToContinuousIndex(tuple(map(float, c)))
                      for c in corners])
    start = np.maximum(np.floor(index.min(axis=0)).astype(int), 0)
    stop = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 1, np.asarray(reference.GetSize()))
    return start, stop
