"""Images in and out of model space.

Reading (:func:`read_image`) accepts NIfTI, NRRD, MHA/MHD and DICOM series folders and refuses
what the model cannot use (2D, 4D without a frame, RGB/vector, NaN/Inf, empty) with a one-line
:class:`HermesError`. Geometry is kept exactly: origin, spacing and any direction matrix.

Model space (:func:`to_model_space`) is an axis-aligned LPS grid (identity direction), arrays in
[z, y, x] order, at the manifest's spacing, that covers the physical extent of the input. Every
input -- identity, flipped (e.g. RAS-stored) or oblique -- goes through the same linear
resampling onto that grid, so there is no permutation-only special case to get wrong. Intensities
are normalised as the manifest says (clip then z-score per volume) and the array is cropped to
the body so that windows of pure air are never run.

Back to the input grid (:func:`probabilities_to_mask`, :func:`from_model_space`).

Design decision -- resample probabilities linearly, then threshold at 0.5 (not: threshold in
model space and resample the labels with nearest neighbour). Measured with
``Testing/test_imaging.py::test_linear_probabilities_beat_nearest_labels``: a sphere of radius
12 mm, its indicator sampled in model space (1.5 mm isotropic) as a smooth probability (a
logistic of the signed distance, width 0.75 mm), mapped back to an input grid of
0.7 x 0.7 x 3.0 mm (anisotropic, typical CT). Dice against the analytic sphere on the input grid:
linear on float probabilities 0.9935, linear on uint8-quantised probabilities 0.9935 (so
quantising to 0..255 costs nothing), nearest neighbour on model-space labels 0.9416 (each
1.5 mm label voxel is copied onto ~2 x 2 in-plane 0.7 mm voxels, so the surface is off by up to
half a model voxel). Linear interpolation of a probability is a convex combination of model
voxels, so a 1-voxel margin around the model-space bounding box of ``p >= 0.5`` contains every
input voxel that can pass the threshold; :func:`probabilities_to_mask` resamples only that
sub-region, so its memory follows the target's size, not the volume's (a 300 x 150 x 210 mm
target on a 512 x 512 x 300 CT: 0.24 s, no rise in peak RSS).

Reference geometry: :func:`reference_geometry` returns a zero-filled UInt8 image on the input
grid (1 byte per voxel, 79 MB for 512 x 512 x 300), not a 1-voxel holder: ``GetSize()`` and
``sitk.Resample(referenceImage=...)`` then stay correct for every caller, at an eighth of the
cost of keeping a float64 or a quarter of a float32 input alive.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import HermesError

log = logging.getLogger(__name__)

PathLike = Union[str, Path]
IndexZYX = Tuple[int, int, int]

# DICOM Modality (0008,0060) values -> vocabulary modality keys.
_DICOM_MODALITY_KEYS = {"CT": "CT", "PT": "PET", "MR": "MR"}
# Body threshold for CT in HU: above air and lung parenchyma's darkest parts, below fat (-100).
_CT_BODY_HU = -500.0
# Margin added around the body mask, in mm, so that the skin and a bit of air stay in the crop.
_BODY_MARGIN_MM = 10.0
# Downsampling factor along an axis above which the input is smoothed first (anti-aliasing).
_ANTIALIAS_FACTOR = 1.5
# Threads for the last step of mapping a mask back to an axis-aligned input grid (memory-bound:
# more than four rarely helps).
_MAPPING_THREADS = min(4, os.cpu_count() or 1)


@dataclass
class ModelSpaceImage:
    """An image in model space, cropped to the body.

    ``array``: float32 [z, y, x], normalised, the crop ``body_box`` of the full model grid.
    ``crop_offset_zyx``: index of ``array[0, 0, 0]`` in the full model grid.
    ``grid_size_zyx``, ``origin_xyz`` (mm, LPS), ``spacing_zyx`` (mm), ``direction`` (identity,
    row-major 3x3 as SimpleITK gives it): the full model-space grid, to map results back.
    ``body_box``: ((z0, z1), (y0, y1), (x0, x1)) half-open box of the crop in the full grid.
    ``midline_x``: the body's sagittal midline as an x index of the full grid, whose x runs
    toward the patient's left (see :func:`_find_body`); None when it is unknown.
    """

    array: np.ndarray
    crop_offset_zyx: IndexZYX
    grid_size_zyx: IndexZYX
    origin_xyz: Tuple[float, float, float]
    spacing_zyx: Tuple[float, float, float]
    direction: Tuple[float, ...]
    body_box: Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]
    midline_x: Optional[float] = None

    def crop_image(self, values: np.ndarray) -> sitk.Image:
        """``values`` (any dtype, shape of ``array``) as a SimpleITK image on the crop's grid."""
        if values.shape != self.array.shape:
            raise ValueError(f"values shape {values.shape} != model crop shape {self.array.shape}")
        image = sitk.GetImageFromArray(values)
        offset_xyz = np.asarray(self.crop_offset_zyx[::-1], dtype=float)
        image.SetOrigin(tuple(np.asarray(self.origin_xyz) + offset_xyz * self.spacing_zyx[::-1]))
        image.SetSpacing(tuple(float(s) for s in self.spacing_zyx[::-1]))
        image.SetDirection(self.direction)
        return image


@dataclass
class TargetMaskCrop:
    """A binary mask on the input grid, stored as its bounding box.

    ``offset_zyx``: index of ``array[0, 0, 0]`` in the input image; ``array``: bool [z, y, x].
    An empty mask has shape (0, 0, 0).
    """

    offset_zyx: IndexZYX
    array: np.ndarray


# --------------------------------------------------------------------------------------------
# Reading


def read_image(path: PathLike, *, frame: Optional[int] = None) -> sitk.Image:
    """Read a 3D scalar image (NIfTI, NRRD, MHA/MHD, a DICOM file or a DICOM series folder).

    The pixel type is kept (e.g. int16 CT stays int16: half the memory of float32);
    :func:`to_model_space` casts. ``frame`` picks one frame of a 4D image (or one component of a
    vector image). Raises :class:`HermesError` (one line) for anything the model cannot use.
    """
    path = Path(path)
    if not path.exists():
        raise HermesError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        image = _read_dicom_series(path)
    else:
        try:
            image = sitk.ReadImage(str(path))
        except RuntimeError:
            raise HermesError(
                f"{path}: cannot read the image (unsupported format or corrupt file); "
                "use NIfTI, NRRD, MHA/MHD or a DICOM series folder"
            ) from None
    image = _select_frame(image, frame, path)
    _check_scalar_3d(image, path)
    _check_finite(image, path)
    return image


def _read_dicom_series(folder: Path) -> sitk.Image:
    files = _dicom_series_files(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        return reader.Execute()
    except RuntimeError:
        raise HermesError(f"{folder}: cannot read the DICOM series (corrupt or unsupported files); "
                          "check the folder holds one complete series") from None


def _dicom_series_files(folder: Path) -> Sequence[str]:
    """Files of the DICOM series with the most files in ``folder`` (warns when there are several)."""
    series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise HermesError(f"{folder}: no DICOM series found in this folder; "
                          "give a folder of DICOM files or an image file")
    by_id = {sid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in series_ids}
    chosen = max(by_id, key=lambda sid: len(by_id[sid]))
    if len(by_id) > 1:
        log.warning("%s holds %d DICOM series; using %s (%d files), the one with the most files",
                    folder, len(by_id), chosen, len(by_id[chosen]))
    return by_id[chosen]


def _select_frame(image: sitk.Image, frame: Optional[int], path: Path) -> sitk.Image:
    dim = image.GetDimension()
    components = image.GetNumberOfComponentsPerPixel()
    if dim == 4:
        frames = image.GetSize()[3]
        if frame is None:
            raise HermesError(f"{path}: 4D image with {frames} frames; pick one with --frame N "
                              f"(0..{frames - 1})")
        if not 0 <= frame < frames:
            raise HermesError(f"{path}: frame {frame} out of range; this 4D image has frames "
                              f"0..{frames - 1}")
        size = list(image.GetSize())
        size[3] = 0  # 0 = collapse this dimension
        return sitk.Extract(image, size, [0, 0, 0, frame])
    if components > 1 and frame is not None:
        # A 4D series stored as a vector image (e.g. NRRD "list" axis): one component per frame.
        if not 0 <= frame < components:
            raise HermesError(f"{path}: frame {frame} out of range; this image has frames "
                              f"0..{components - 1}")
        return sitk.VectorIndexSelectionCast(image, frame)
    if frame not in (None, 0):
        raise HermesError(f"{path}: frame {frame} out of range; this image has a single frame "
                          "(leave out --frame)")
    return image


def _check_scalar_3d(image: sitk.Image, path: Path) -> None:
    components = image.GetNumberOfComponentsPerPixel()
    if components > 1:
        raise HermesError(f"{path}: image has {components} components per voxel (RGB/vector); "
                          "HermesSegment needs a scalar (grayscale) volume")
    size = image.GetSize()
    if 0 in size:
        raise HermesError(f"{path}: the image is empty (size {size}); check the file")
    if image.GetDimension() < 3 or min(size) == 1:
        raise HermesError(f"{path}: 2D image (size {'x'.join(map(str, size))}); "
                          "HermesSegment needs a 3D volume")
    if image.GetDimension() > 3:
        raise HermesError(f"{path}: {image.GetDimension()}D image; HermesSegment needs a 3D volume")


def _check_finite(image: sitk.Image, path: Path) -> None:
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return  # integer voxels cannot be NaN or Inf
    view = sitk.GetArrayViewFromImage(image)
    for z in range(view.shape[0]):  # slice by slice: no volume-sized boolean temporary
        sl = view[z]
        if not np.isfinite(sl).all():
            what = "NaN" if np.isnan(sl).any() else "infinite"
            raise HermesError(f"{path}: image contains {what} values; "
                              "fix or replace them (e.g. with the background value) and retry")


# --------------------------------------------------------------------------------------------
# Modality


def dicom_modality(path: PathLike) -> Optional[str]:
    """The DICOM Modality tag (0008,0060), e.g. "CT", "PT", "MR", of a series folder or a file.

    None when the path is not DICOM or the tag is missing.
    """
    path = Path(path)
    try:
        file = _dicom_series_files(path)[0] if path.is_dir() else str(path)
        reader = sitk.ImageFileReader()
        reader.SetFileName(file)
        reader.ReadImageInformation()
        if not reader.HasMetaDataKey("0008|0060"):
            return None
        value = reader.GetMetaData("0008|0060").strip()
    except (RuntimeError, HermesError):
        return None
    return value or None


def guess_modality(image: sitk.Image, dicom_modality: Optional[str] = None) -> Optional[str]:
    """Guess the vocabulary modality key ("CT", "PET", "MR") or None when unsure.

    The DICOM Modality tag wins when given. Otherwise from intensities, on a strided sample:
    CT has air near -1024 HU (min between -3100 and -900) and bone above 1000 HU; PET is
    non-negative with small values (SUV, max <= 100) and a long tail (99.9th percentile at least
    5x the median of the positive voxels). MR intensities are arbitrary, so MR is never guessed
    from values alone.
    """
    if dicom_modality:
        key = _DICOM_MODALITY_KEYS.get(dicom_modality.strip().upper())
        if key:
            return key
    sample = _strided_sample(image)
    lo, hi = float(sample.min()), float(sample.max())
    if -3100.0 <= lo <= -900.0 and hi > 1000.0:
        return "CT"
    positive = sample[sample > 0]
    if lo >= 0.0 and 0.0 < hi <= 100.0 and positive.size:
        if np.percentile(positive, 99.9) >= 5.0 * np.median(positive):
            return "PET"
    return None


def _strided_sample(image: sitk.Image, target: int = 2_000_000) -> np.ndarray:
    """A regularly strided float32 sample of about ``target`` voxels (no full-volume copy)."""
    view = sitk.GetArrayViewFromImage(image)
    step = max(1, int(round((view.size / target) ** (1 / 3))))
    return np.asarray(view[::step, ::step, ::step], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# To model space


def to_model_space(
    image: sitk.Image,
    *,
    spacing_zyx: Sequence[float],
    normalization: dict,
    crop_to_body: bool = True,
    modality: Optional[str] = None,
    window_lattice: Optional[Tuple[Sequence[int], float]] = None,
) -> ModelSpaceImage:
    """Resample ``image`` onto the model grid, normalise it, crop it to the body.

    ``spacing_zyx``: model spacing in mm (manifest ``input.spacing_zyx_mm``).
    ``normalization``: the manifest entry of the modality, ``{"method": "clip_zscore", "clip":
    [lo, hi]}`` or ``{"method": "percentile_clip_zscore", "percentiles": [p_lo, p_hi]}``; the
    statistics (percentiles, mean, std) are those of the whole model-space volume, before the
    crop, so that cropping does not change the intensities the network sees.
    ``modality``: picks the body threshold (CT: -500 HU; others: 5% of the way from the 1st to
    the 99th percentile); guessed from the image when None.
    ``window_lattice``: (window, overlap) of the sliding window that will run on the crop; the
    body crop is then widened to whole windows of the lattice laid over the full model grid
    (:func:`inference.windows.lattice_box`), so that the crop runs a subset of the whole-volume
    run's windows at the same places and the body gets the same result, not a shifted one.
    Memory, measured on an int16 512 x 512 x 300 CT at 0.8 x 0.8 x 2.5 mm -> 1.5 mm: peak RSS
    +0.48 GB over the input (the float32 copy anti-aliased in place, its SimpleITK image,
    then the float32 model-space volume), 3.6 s on two shared CPU cores.
    """
    _check_normalization(normalization)
    spacing_xyz = np.asarray(spacing_zyx, dtype=float)[::-1]
    size_xyz, origin_xyz = _model_grid(image, spacing_xyz)

    source = _antialias(image, spacing_xyz)
    background = float(sitk.GetArrayViewFromImage(source).min())
    resampled = sitk.Resample(
        source, [int(s) for s in size_xyz], sitk.Transform(), sitk.sitkLinear,
        tuple(origin_xyz), tuple(spacing_xyz), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        background, sitk.sitkFloat32,
    )
    del source
    array = sitk.GetArrayFromImage(resampled)  # float32 [z, y, x]
    del resampled

    full = tuple((0, n) for n in array.shape)
    body, midline_x = _find_body(array, spacing_zyx, modality or guess_modality(image))
    if crop_to_body:
        body_box = body or full
        if window_lattice is not None:
            from .inference.windows import lattice_box  # here: importing the package loads torch

            window, overlap = window_lattice
            body_box = lattice_box(body_box, array.shape, window, overlap)
    else:
        body_box = full
    _normalize_inplace(array, normalization)
    crop = tuple(slice(a, b) for a, b in body_box)
    cropped = np.ascontiguousarray(array[crop]) if body_box != full else array
    return ModelSpaceImage(
        array=cropped,
        crop_offset_zyx=tuple(int(a) for a, _ in body_box),
        grid_size_zyx=tuple(int(n) for n in array.shape),
        origin_xyz=tuple(float(v) for v in origin_xyz),
        spacing_zyx=tuple(float(s) for s in spacing_zyx),
        direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        body_box=tuple((int(a), int(b)) for a, b in body_box),
        midline_x=midline_x,
    )


def _check_normalization(normalization: dict) -> None:
    method = normalization.get("method")
    if method == "clip_zscore" and len(normalization.get("clip", ())) == 2:
        return
    if method == "percentile_clip_zscore" and len(normalization.get("percentiles", ())) == 2:
        return
    raise HermesError(f"unsupported normalization {normalization!r} in the model manifest; "
                      "use clip_zscore with clip [lo, hi] or percentile_clip_zscore with percentiles")


def _physical_corners(image: sitk.Image) -> np.ndarray:
    """(8, 3) LPS points of the outer voxel edges of ``image`` (index -0.5 .. size-0.5)."""
    size = np.asarray(image.GetSize(), dtype=float)
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)
    index = corners * size - 0.5
    return index @ matrix.T + np.asarray(image.GetOrigin())


def _model_grid(image: sitk.Image, spacing_xyz: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Size and origin (xyz) of the axis-aligned LPS grid covering ``image``'s physical extent.

    The grid is centred on the image's extent, so an axis-aligned input at the model spacing
    maps voxel centre onto voxel centre (a pure permutation/flip, no interpolation blur).
    """
    corners = _physical_corners(image)
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    size = np.maximum(1, np.ceil((hi - lo) / spacing_xyz - 1e-6)).astype(int)
    centre = (lo + hi) / 2
    origin = centre - (size - 1) * spacing_xyz / 2
    return size, origin


def _antialias(image: sitk.Image, spacing_xyz: np.ndarray) -> sitk.Image:
    """Gaussian-smooth the input along the axes downsampled by more than 1.5x, else pass it on.

    The model spacing seen along input axis i is sum_k |d_ki| * s_k (exact for axis-aligned
    inputs, a fair estimate for oblique ones); sigma = (factor - 1) / 2 input voxels, the rule
    scikit-image uses for anti-aliasing. scipy filters the float32 copy in place: 3x faster
    than ITK's recursive Gaussian here and one volume-sized buffer fewer.
    """
    from scipy import ndimage

    direction = np.abs(np.asarray(image.GetDirection()).reshape(3, 3))
    in_spacing = np.asarray(image.GetSpacing())
    factors = (direction.T @ spacing_xyz) / in_spacing
    if factors.max() <= _ANTIALIAS_FACTOR:
        return image
    array = sitk.GetArrayViewFromImage(image).astype(np.float32)  # [z, y, x]
    for axis_xyz, factor in enumerate(factors):
        if factor > _ANTIALIAS_FACTOR:
            ndimage.gaussian_filter1d(array, (factor - 1) / 2, axis=2 - axis_xyz, output=array,
                                      mode="nearest", truncate=3.0)
    smoothed = sitk.GetImageFromArray(array)
    smoothed.CopyInformation(image)
    return smoothed


def _find_body(array: np.ndarray, spacing_zyx: Sequence[float], modality: Optional[str]):
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
        p1, p99 = np.percentile(_strided_view(array), [1, 99])
        threshold = p1 + 0.05 * (p99 - p1)
    step = np.maximum(1, np.round(3.0 / np.asarray(spacing_zyx, dtype=float))).astype(int)
    coarse = _block_any(array, threshold, step)
    labels, count = ndimage.label(coarse, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return None, None
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= 0.1 * sizes.max()) + 1
    body = np.isin(labels, keep)
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(body.any(axis=other))
        margin = int(math.ceil(_BODY_MARGIN_MM / spacing_zyx[axis]))
        start = max(0, hits[0] * step[axis] - margin)
        stop = min(array.shape[axis], (hits[-1] + 1) * step[axis] + margin)
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


def _strided_view(array: np.ndarray, target: int = 2_000_000) -> np.ndarray:
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


def _normalize_inplace(array: np.ndarray, normalization: dict) -> None:
    """Clip then z-score ``array`` (float32) in place; statistics in float64 accumulators."""
    if normalization["method"] == "clip_zscore":
        lo, hi = (float(v) for v in normalization["clip"])
    else:
        lo, hi = (float(v) for v in np.percentile(array, normalization["percentiles"]))
    np.clip(array, lo, hi, out=array)
    total = total_sq = 0.0
    for z in range(array.shape[0]):  # per slice: no volume-sized float64 temporary
        sl = array[z].astype(np.float64)
        total += float(sl.sum())
        total_sq += float(np.dot(sl.ravel(), sl.ravel()))
    n = array.size
    mean = total / n
    std = math.sqrt(max(total_sq / n - mean * mean, 0.0))
    array -= np.float32(mean)
    # A constant volume has std 0: leave it centred at 0 rather than dividing by zero.
    if std > 1e-6:
        array /= np.float32(std)


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
) -> TargetMaskCrop:
    """Threshold a target's model-space probabilities on the input grid, as a bounding-box crop.

    ``prob_model_space``: shape of ``model.array``; float in [0, 1] or uint8 quantised 0..255
    (then ``threshold`` is scaled by 255). Linear interpolation, then ``p >= threshold``.
    Only the input sub-region under the model-space box of ``p >= threshold`` (plus one model
    voxel) is resampled.
    """
    cut = threshold * 255.0 if prob_model_space.dtype == np.uint8 else threshold
    hits = [np.flatnonzero((prob_model_space >= cut).any(axis=tuple(a for a in range(3) if a != ax)))
            for ax in range(3)]
    empty = TargetMaskCrop((0, 0, 0), np.zeros((0, 0, 0), dtype=bool))
    if any(h.size == 0 for h in hits):
        return empty
    # One model voxel of margin: a linearly interpolated value >= cut needs a corner >= cut.
    lo = [max(0, int(h[0]) - 1) for h in hits]
    hi = [min(n, int(h[-1]) + 2) for h, n in zip(hits, prob_model_space.shape)]
    sub = np.ascontiguousarray(prob_model_space[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], dtype=np.float32)
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
        mask = sitk.GetArrayViewFromImage(sitk.Resample(
            sub_image, [int(v) for v in stop - start], sitk.Transform(), sitk.sitkLinear, origin,
            reference.GetSpacing(), reference.GetDirection(), 0.0, sitk.sitkFloat32)) >= cut
    return _tight_crop(mask, tuple(int(v) for v in start[::-1]))


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
    corners = _physical_corners(sub_image)
    index = np.array([reference.TransformPhysicalPointToContinuousIndex(tuple(map(float, c)))
                      for c in corners])
    start = np.maximum(np.floor(index.min(axis=0)).astype(int), 0)
    stop = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 1, np.asarray(reference.GetSize()))
    return start, stop


def _tight_crop(mask: np.ndarray, offset_zyx: IndexZYX) -> TargetMaskCrop:
    """Shrink a bool crop to the bounding box of its True voxels."""
    hits = [np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    if any(h.size == 0 for h in hits):
        return TargetMaskCrop((0, 0, 0), np.zeros((0, 0, 0), dtype=bool))
    box = tuple(slice(int(h[0]), int(h[-1]) + 1) for h in hits)
    offset = tuple(int(o + b.start) for o, b in zip(offset_zyx, box))
    return TargetMaskCrop(offset, np.ascontiguousarray(mask[box]))
