"""DICOM series folders: which series are there, which one is read, damaged files, and slices
that do not lie on a regular grid.

Parsing is a library's: GDCM (through SimpleITK) groups the files into series and reads the
pixels and the tags; pydicom looks at the files GDCM refused. This module only decides.

Geometry. ITK builds a volume from the first slice's ImageOrientationPatient and the distance of the
first two slices, so any other series is silently misplaced: a CT acquired with a gantry tilt (image
planes tilted, the table moving along z) becomes a sheared grid read as a straight one, and a series
with unequal gaps (missing slices, thin and thick slices) is stretched. Here every slice's
ImagePositionPatient (0020,0032), ImageOrientationPatient (0020,0037) and PixelSpacing (0028,0030)
is checked: all pixel spacings equal and all planes parallel (else refused), no two at one position,
i.e. closer than a tenth of the median gap (else refused); if the positions do not lie on one line
along the planes' normal at one spacing (within ``TOLERANCE_MM``, the tolerance of Slicer's
DICOMScalarVolumePlugin), the series is resampled onto a regular grid, with a warning, as dcm2niix
and Slicer's acquisition geometry regularization do: in-plane axes and pixel spacing of the slices,
the normal as third axis, the median gap as slice spacing, large enough to hold every slice. Each
output plane is interpolated linearly between the two acquired planes around it along the normal,
each sampled at the same physical point (bilinear in plane).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from .errors import HermesError
from .image_files import image_header
from .memory import is_memory_error, out_of_memory

log = logging.getLogger(__name__)

#: Positions within this distance (mm) of the regular grid count as on it (Slicer: spacingEpsilon).
TOLERANCE_MM = 0.01
#: Slices closer than this fraction of the series' median gap count as lying at one position.
DUPLICATE_FRACTION = 0.1
#: Largest difference of ImageOrientationPatient components for planes to count as parallel.
ORIENTATION_TOLERANCE = 1e-4
_TAGS = {"description": "0008|103e", "number": "0020|0011", "modality": "0008|0060", "frames": "0028|0008"}


@dataclass
class Series:
    """One series of a folder, as GDCM groups it (by SeriesInstanceUID)."""

    uid: str
    files: list[str]
    number: Optional[int]
    description: str
    modality: str
    slices: int

    def label(self) -> str:
        number = f"#{self.number}" if self.number is not None else "#?"
        plural = "slice" if self.slices == 1 else "slices"
        return f"{number} '{self.description or 'no description'}' ({self.modality or '?'}, {self.slices} {plural})"


def list_series(folder: Path) -> list[Series]:
    """The image series in ``folder`` (not its subfolders), in series-number order."""
    found = []
    for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
        files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
        tags = _header(files[0])
        number = tags["number"].strip()
        frames = tags["frames"].strip()
        slices = int(frames) if len(files) == 1 and frames.isdigit() else len(files)
        found.append(Series(uid, files, int(number) if number.lstrip("-").isdigit() else None,
                            tags["description"].strip(), tags["modality"].strip().upper(), slices))
    return sorted(found, key=lambda s: (s.number is None, s.number or 0, s.uid))


def _header(file: str) -> dict[str, str]:
    reader = image_header(file)
    if reader is None:
        return {key: "" for key in _TAGS}
    return {key: reader.GetMetaData(tag) if reader.HasMetaDataKey(tag) else "" for key, tag in _TAGS.items()}


def choose_series(folder: Path, found: Sequence[Series], selector: Optional[str] = None,
                  modality: Optional[str] = None) -> Series:
    """The series to read: the one ``selector`` names (its UID, or a part of its description, any
    case); else, among the series with more than one slice (a volume), those of the DICOM modality
    that ``modality`` (a vocabulary key) carries when there are any, the one with the most slices,
    the lowest series number on a tie. Warns with the list when there was a choice to make."""
    if selector:
        wanted = selector.strip().lower()
        matches = [s for s in found if s.uid == selector.strip()] or \
                  [s for s in found if wanted in s.description.lower()]
        if len(matches) != 1:
            which = "no series matches" if not matches else f"{len(matches)} series match"
            raise HermesError(f"{folder}: {which} --series {selector!r}; the folder holds "
                              f"{_listing(matches or found)}; give a series UID or a part of one description")
        return matches[0]
    volumes = [s for s in found if s.slices > 1] or list(found)
    if modality:
        from . import vocabulary

        codes = set(vocabulary.modality(modality).dicom_modalities)
        volumes = [s for s in volumes if s.modality in codes] or volumes
    chosen = max(volumes, key=lambda s: (s.slices, -(s.number if s.number is not None else 1 << 30)))
    if len(found) > 1:
        log.warning("%s holds %d DICOM series: %s; using %s (the rule: the %s series with the most slices, "
                    "the lowest number on a tie); choose another with --series UID or a part of its description",
                    folder, len(found), _listing(found), chosen.label(), modality or "volume")
    return chosen


def _listing(series: Sequence[Series]) -> str:
    return ", ".join(f"{s.label()} {s.uid}" for s in series)


def damaged_files(folder: Path, found: Sequence[Series]) -> list[Path]:
    """Image files of ``folder`` that GDCM refused: DICOM files (the 'DICM' marker, or a DICOM file
    ending: .dcm, .dicom, .ima, or the ending of the series' own files, for a file cut before its
    marker) that hold pixel data (by pydicom, header only) or cannot be read at all, but belong to
    no series GDCM could read."""
    grouped = {Path(f).resolve() for s in found for f in s.files}
    endings = {".dcm", ".dicom", ".ima"} | {Path(f).suffix.lower() for s in found for f in s.files} - {""}
    suspects = []
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.name.startswith(".") or path.resolve() in grouped:
            continue
        with open(path, "rb") as f:
            if f.read(132)[128:132] != b"DICM" and path.suffix.lower() not in endings:
                continue
        suspects.append(path)
    if not suspects:
        return []
    import pydicom
    from pydicom.errors import InvalidDicomError

    damaged = []
    for path in suspects:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            damaged.append(path)
            continue
        if "Rows" in header:  # an image GDCM could not read: truncated, damaged or undecodable
            damaged.append(path)
    return damaged


def read_series(folder: Path, *, series: Optional[str] = None, modality: Optional[str] = None) -> sitk.Image:
    """The chosen series of ``folder`` as a 3D image on a regular grid (see the module docstring).

    Raises :class:`HermesError` for an empty folder, damaged files, slices of different pixel spacings,
    planes that are not parallel or slices at one position; warns when it chose among several series or resampled.
    """
    found = list_series(folder)
    damaged = damaged_files(folder, found)
    if damaged:
        names = ", ".join(p.name for p in damaged[:5]) + (" ..." if len(damaged) > 5 else "")
        raise HermesError(f"{folder}: {len(damaged)} DICOM file(s) cannot be read (truncated, damaged or an "
                          f"unsupported encoding): {names}; restore them, or move them out of the folder to use "
                          "the rest")
    if not found:
        raise HermesError(f"{folder}: no DICOM series found in this folder; "
                          "give a folder of DICOM files or an image file")
    chosen = choose_series(folder, found, series, modality)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(chosen.files)
    reader.MetaDataDictionaryArrayUpdateOn()
    warnings_shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's own spacing warning: we say it better
    try:
        image = reader.Execute()
    except RuntimeError as error:
        if is_memory_error(error):
            raise out_of_memory("reading the DICOM series", error) from None
        raise HermesError(f"{folder}: cannot read the DICOM series {chosen.label()} (truncated, damaged or "
                          "unsupported files); check the folder holds one complete series") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings_shown)
    if len(chosen.files) < 2:
        return image
    spacings = [_numbers(reader, k, "0028|0030", 2) for k in range(len(chosen.files))]
    known = [v for v in spacings if v is not None]
    if known and max(float(np.abs(v - known[0]).max()) for v in known) > TOLERANCE_MM:
        sizes = sorted({"x".join(f"{x:g}" for x in v) for v in known})
        raise HermesError(f"{folder}: the slices have different pixel spacings (0028,0030: {', '.join(sizes)} mm), "
                          "so they cannot be stacked into one volume; export the series again, or only its slices of "
                          "one pixel spacing")
    positions = [_numbers(reader, k, "0020|0032", 3) for k in range(len(chosen.files))]
    orientations = [_numbers(reader, k, "0020|0037", 6) for k in range(len(chosen.files))]
    return on_regular_grid(image, positions, orientations, str(folder))


def _numbers(reader: sitk.ImageSeriesReader, slice_index: int, tag: str, count: int) -> Optional[np.ndarray]:
    if not reader.HasMetaDataKey(slice_index, tag):
        return None
    try:
        values = np.array([float(v) for v in reader.GetMetaData(slice_index, tag).split("\\")])
    except ValueError:
        return None
    return values if values.size == count else None


def on_regular_grid(image: sitk.Image, positions: Sequence[Optional[np.ndarray]],
                    orientations: Sequence[Optional[np.ndarray]], name: str) -> sitk.Image:
    """``image`` (slice k read from the file whose tags are ``positions[k]``, ``orientations[k]``)
    with the geometry its tags give, resampled to a regular grid when they are not one."""
    if any(p is None for p in positions) or any(o is None for o in orientations):
        if all(p is None for p in positions):
            log.warning("%s: the slices carry no position (0020,0032); their geometry could not be checked", name)
            return image
        raise HermesError(f"{name}: some slices have no position or orientation tag (0020,0032/0037); "
                          "the series is incomplete or mixed: export it again from the scanner or PACS")
    planes = [o for o in orientations if o is not None]
    reference = planes[0]
    if max(float(np.abs(o - reference).max()) for o in planes) > ORIENTATION_TOLERANCE:
        raise HermesError(f"{name}: the slices have different orientations (0020,0037), e.g. a localizer and "
                          "axial slices in one series; split the series (or export only the axial one) and retry")
    x_axis, y_axis = reference[:3] / np.linalg.norm(reference[:3]), reference[3:] / np.linalg.norm(reference[3:])
    normal = np.cross(x_axis, y_axis)
    points = np.asarray(positions, dtype=float)
    depth = points @ normal
    order = np.argsort(depth, kind="stable")
    points, depth = points[order], depth[order]
    gaps = np.diff(depth)
    # Two slices closer than a tenth of the usual gap are one position measured twice (a repeat whose
    # table position differs by a rounding), not a thin slice: stacking them would invent anatomy.
    if gaps.min() <= max(TOLERANCE_MM, DUPLICATE_FRACTION * float(np.median(gaps))):
        k = int(np.argmin(gaps))
        raise HermesError(f"{name}: two slices lie at the same position ({depth[k]:.2f} mm along the normal, "
                          f"{gaps[k]:.3g} mm apart): the series holds several volumes (phases, echoes or repeats); "
                          "export one of them and retry")
    spacing = float(np.median(gaps))
    shift = np.stack([(points - points[0]) @ x_axis, (points - points[0]) @ y_axis], axis=1)  # mm, in plane
    column_spacing, row_spacing = image.GetSpacing()[:2]
    direction = np.column_stack([x_axis, y_axis, normal])
    uneven = float(np.abs(gaps - spacing).max())
    sheared = float(np.abs(shift).max())
    if uneven <= TOLERANCE_MM and sheared <= TOLERANCE_MM:
        if not np.array_equal(order, np.arange(len(order))):
            image = sitk.GetImageFromArray(sitk.GetArrayViewFromImage(image)[order])
        image.SetOrigin(tuple(points[0]))
        image.SetSpacing((column_spacing, row_spacing, spacing))
        image.SetDirection(tuple(direction.ravel()))
        return image

    reasons = []
    if sheared > TOLERANCE_MM:
        travel = points[-1] - points[0]
        tilt = np.degrees(np.arccos(min(1.0, abs(travel @ normal) / np.linalg.norm(travel))))
        reasons.append(f"gantry tilt: slices stacked {tilt:.1f} degrees off their normal")
    if uneven > TOLERANCE_MM:
        missing = int(np.sum(np.round(gaps / spacing) - 1)) if spacing > 0 else 0
        reasons.append(f"not equally spaced: gaps {gaps.min():.3g}-{gaps.max():.3g} mm"
                       + (f", about {missing} slice(s) missing" if missing > 0 else ""))
    values = sitk.GetArrayViewFromImage(image)[order]
    resampled = _resample_stack(values, depth, shift / [column_spacing, row_spacing], spacing)
    origin = points[0] + shift[:, 0].min() * x_axis + shift[:, 1].min() * y_axis
    regular = sitk.GetImageFromArray(resampled)
    regular.SetOrigin(tuple(origin))
    regular.SetSpacing((column_spacing, row_spacing, spacing))
    regular.SetDirection(tuple(direction.ravel()))
    log.warning("%s: the slices are not a regular grid (%s); resampled to a regular %.3g x %.3g x %.3g mm grid, as "
                "dcm2niix and Slicer do; the masks are on that grid", name, "; ".join(reasons), column_spacing,
                row_spacing, spacing)
    return regular


def _resample_stack(values: np.ndarray, depth: np.ndarray, shift: np.ndarray, spacing: float) -> np.ndarray:
    """Planes [k, row, column] at ``depth`` (mm, increasing), plane k shifted in plane by
    ``shift[k]`` (columns, rows), onto planes every ``spacing`` mm from ``depth[0]`` on one canvas
    that holds every plane; linear along the normal, bilinear in plane, the minimum outside."""
    from scipy import ndimage

    low = shift.min(axis=0)
    columns = values.shape[2] + int(np.ceil(shift[:, 0].max() - low[0] - 1e-6))
    rows = values.shape[1] + int(np.ceil(shift[:, 1].max() - low[1] - 1e-6))
    planes = int(np.floor((depth[-1] - depth[0]) / spacing + 1e-6)) + 1
    background = float(values.min())
    out = np.empty((planes, rows, columns), dtype=values.dtype)
    cache: dict[int, np.ndarray] = {}

    def placed(k: int) -> np.ndarray:
        if k not in cache:
            if len(cache) > 2:  # output planes advance along the normal: older planes are not needed again
                cache.clear()
            offset = (low[1] - shift[k, 1], low[0] - shift[k, 0])  # canvas pixel + offset = pixel of plane k
            cache[k] = ndimage.affine_transform(values[k].astype(np.float32), np.eye(2), offset=offset,
                                                output_shape=(rows, columns), order=1, mode="constant", cval=background)
        return cache[k]

    for t in range(planes):
        target = depth[0] + t * spacing
        k = int(np.clip(np.searchsorted(depth, target, side="right") - 1, 0, len(depth) - 2))
        w = float(np.clip((target - depth[k]) / (depth[k + 1] - depth[k]), 0.0, 1.0))
        plane = placed(k) * (1.0 - w) + placed(k + 1) * w
        out[t] = np.rint(plane) if np.issubdtype(values.dtype, np.integer) else plane
    return out
