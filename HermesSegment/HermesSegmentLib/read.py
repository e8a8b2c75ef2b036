"""Images in: NIfTI, NRRD, MHA/MHD, DICOM series folders, with one-line errors.

Reading (:func:`read_image`) refuses what the model cannot use (2D, 4D without a frame, RGB/vector,
NaN/Inf, empty, truncated or damaged data) with a one-line :class:`HermesError`
(:mod:`.image_files`). Geometry is kept exactly: origin, spacing and any direction matrix; a DICOM
series whose slices are not a regular grid is resampled onto one, with a warning (:mod:`.dicom`).
:func:`guess_modality` reads the DICOM tag or the intensities.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union

import numpy as np
import SimpleITK as sitk

from . import vocabulary
from .errors import HermesError

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: File endings of the images HermesSegment reads (longest first: ".nii.gz" before ".nii").
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".hdr")
#: File endings that hold a case: an image, or a segmentation (".seg.nrrd" before ".nrrd").
CASE_SUFFIXES = (".seg.nrrd",) + IMAGE_SUFFIXES


# --------------------------------------------------------------------------------------------
# Reading


def read_image(path: PathLike, *, frame: Optional[int] = None, series: Optional[str] = None,
               modality: Optional[str] = None) -> sitk.Image:
    """Read a 3D scalar image (NIfTI, NRRD/NHDR, MHA/MHD, a DICOM series folder).

    The pixel type is kept (e.g. int16 CT stays int16: half the memory of float32);
    :func:`to_model_space` casts. ``frame`` picks one frame of a 4D image (or one component of a
    vector image). For a folder holding several DICOM series, ``series`` (a UID or a part of a
    description) or else ``modality`` (a vocabulary key) picks one (:func:`.dicom.choose_series`).
    Raises :class:`HermesError` (one line) for anything the model cannot use.
    """
    path = Path(path)
    if not path.exists():
        raise HermesError(f"{path}: no such file or folder; check the path")
    if path.is_dir():
        from .dicom import read_series

        image = read_series(path, series=series, modality=modality)
    else:
        if series is not None:  # said, not refused: a batch may mix DICOM folders and image files
            log.warning("%s: --series %r ignored: it chooses among the series of a DICOM folder, and this is a file",
                        path, series)
        image = _read_file(path, frame)
    image = _select_frame(image, frame, path)
    _check_scalar_3d(image, path)
    _check_finite(image, path)
    return image


def _read_file(path: Path, frame: Optional[int] = None) -> sitk.Image:
    """One image file; a damaged data block (a compressed one too), a missing data file, NaN in a NIfTI, or a
    single DICOM slice is refused."""
    from .image_files import (
        NIFTI_SUFFIXES,
        check_detached_or_compressed_data,
        check_nifti_data,
        is_dicom_file,
        read_error,
    )

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise read_error(path, error) from None
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        check_nifti_data(path, frame)
    check_detached_or_compressed_data(path)
    if (image.GetDimension() == 2 or image.GetSize()[2:] == (1,)) and is_dicom_file(path):
        raise HermesError(f"{path}: one DICOM slice (2D); pass the folder that holds the whole series")
    return image


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


def check_image(image: object, name: str = "the image") -> None:
    """Refuse, as :func:`read_image` does, an image given in memory (the console API) that the model
    cannot use: not a SimpleITK image, 2D, 4D, RGB/vector, empty, NaN/Inf."""
    if not isinstance(image, sitk.Image):
        raise HermesError(f"{name} is a {type(image).__name__}, not a SimpleITK image; read it with "
                          "HermesSegmentLib.read.read_image(path) (or SimpleITK.ReadImage) and pass that")
    _check_scalar_3d(image, name)
    _check_geometry(image, name)
    _check_finite(image, name)


#: Voxel spacings and extents no scan has: a header whose spacing is not in millimetres (micrometres, metres)
#: or is broken. Resampling such an image to the model grid would allocate without bound, or not at all.
MIN_SPACING_MM = 1e-3
MAX_EXTENT_MM = 5000.0


def _check_geometry(image: sitk.Image, name: Union[Path, str]) -> None:
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    extent = spacing * np.asarray(image.GetSize(), dtype=float)
    if not np.all(np.isfinite(spacing)) or spacing.min() < MIN_SPACING_MM or extent.max() > MAX_EXTENT_MM:
        raise HermesError(f"{name}: voxel spacing {' x '.join(f'{s:g}' for s in spacing)} mm makes the image "
                          f"{' x '.join(f'{e:.4g}' for e in extent)} mm, which no scan is; fix the spacing in the "
                          "file's header (it must be in millimetres) and retry")


def _check_scalar_3d(image: sitk.Image, path: Union[Path, str]) -> None:
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


def _check_finite(image: sitk.Image, path: Union[Path, str]) -> None:
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
    from .dicom import list_series
    from .image_files import image_header

    path = Path(path)
    if path.is_dir():
        try:
            found = list_series(path)
        except (RuntimeError, HermesError):
            return None
        if not found:
            return None
        return max(found, key=lambda series: series.slices).modality or None
    reader = image_header(path)
    if reader is None or not reader.HasMetaDataKey("0008|0060"):
        return None
    value = reader.GetMetaData("0008|0060").strip()
    return value or None


def guess_modality(voxels: Union[sitk.Image, np.ndarray], dicom_modality: Optional[str] = None,
                   series_description: str = "") -> Optional[str]:
    """Guess the vocabulary modality key of an image ("CT", "PET", "MR-T2", ...) or None when unsure.

    ``voxels``: a SimpleITK image or an array (e.g. ``slicer.util.arrayFromVolume``). The DICOM
    Modality tag (0008,0060) wins when the vocabulary knows it, with the series description
    (0008,103E) telling MR sequences apart (:func:`vocabulary.modality_for_dicom`). Otherwise from
    intensities, on a strided sample: CT has air near -1000 HU and soft tissue or bone (1st
    percentile below -500 and 99th above -200 HU, or a minimum between -3100 and -900 with bone
    above 1000 HU); PET is non-negative with small values (SUV, max <= 100) and a long tail (99.9th
    percentile at least 5x the median of the positive voxels). MR intensities are arbitrary, so MR
    is never guessed from values alone.
    """
    if dicom_modality:
        key = vocabulary.modality_for_dicom(dicom_modality, series_description)
        if key:
            return key
    sample = _strided_sample(voxels)
    if sample.size == 0:
        return None
    lo, hi = float(sample.min()), float(sample.max())
    p1, p99 = (float(v) for v in np.percentile(sample, [1, 99]))
    if (-3100.0 <= lo <= -900.0 and hi > 1000.0) or (p1 < -500.0 and p99 > -200.0):
        return "CT"
    positive = sample[sample > 0]
    if lo >= 0.0 and 0.0 < hi <= 100.0 and positive.size:
        if np.percentile(positive, 99.9) >= 5.0 * np.median(positive):
            return "PET"
    return None


def _strided_sample(voxels: Union[sitk.Image, np.ndarray], target: int = 2_000_000) -> np.ndarray:
    """A regularly strided float32 sample of about ``target`` voxels (no full-volume copy)."""
    view = sitk.GetArrayViewFromImage(voxels) if isinstance(voxels, sitk.Image) else np.asarray(voxels)
    if view.ndim == 0:
        return view.reshape(1).astype(np.float32)
    step = max(1, int(round((view.size / target) ** (1 / view.ndim))))
    return np.asarray(view[(slice(None, None, step),) * view.ndim], dtype=np.float32)


def case_name(path: PathLike) -> str:
    """The case a file belongs to: its name without the ending (:data:`CASE_SUFFIXES`, or ``.json``).

    An nnU-Net channel suffix (``case_0007_0000``) is not removed here, because case names may end
    in the same pattern (``case_0000``); ``evaluation.match_cases`` accepts it when pairing.
    """
    name = Path(path).name
    for suffix in CASE_SUFFIXES + (".json",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
