"""Small generated inputs of the kinds real users feed the engine (Testing/test_robust_*.py).

Every builder writes files the way a scanner, a converter or a broken download would, with a
library (SimpleITK, pydicom), never with the engine's own code. DICOM pixel positions follow the
standard (PS3.3 C.7.6.2.1.1): pixel (row r, column c) of a slice lies at
``ImagePositionPatient + c * PixelSpacing[1] * X + r * PixelSpacing[0] * Y``, where X and Y are
the first and last three values of ``ImageOrientationPatient``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk

UID_ROOT = "1.2.826.0.1.3680043.2.1125.9"  # a test root; every UID below is made from it


def body_ct(shape_zyx=(24, 40, 48), spacing_xyz=(4.0, 4.0, 5.0), seed=0) -> np.ndarray:
    """int16 HU: an elliptic trunk (soft tissue 40 HU, noise 10) in air (-1000), a bony blob."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    body = ((x - shape_zyx[2] / 2) / (shape_zyx[2] / 2.5)) ** 2 + ((y - shape_zyx[1] / 2) / (shape_zyx[1] / 3)) ** 2 < 1
    array = np.where(body, 40.0, -1000.0) + rng.normal(0, 10, body.shape)
    array[((x - shape_zyx[2] / 2) ** 2 + (y - shape_zyx[1] * 0.6) ** 2 < 9) & body] = 1200.0
    return np.round(array).astype(np.int16)


def as_image(array: np.ndarray, spacing_xyz=(4.0, 4.0, 5.0), origin=(-90.0, -80.0, 10.0)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in spacing_xyz))
    image.SetOrigin(origin)
    return image


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut a file to ``keep`` of its length, as an interrupted copy or download leaves it."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])


# ------------------------------------------------------------------------------------- DICOM


def pixel_positions(position: Sequence[float], orientation: Sequence[float], pixel_spacing: Sequence[float],
                    rows: int, columns: int) -> np.ndarray:
    """(rows, columns, 3) LPS positions of a slice's pixel centres, by the DICOM standard."""
    x_axis, y_axis = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    r, c = np.mgrid[:rows, :columns]
    return (np.asarray(position, float) + c[..., None] * pixel_spacing[1] * x_axis
            + r[..., None] * pixel_spacing[0] * y_axis)


@dataclass(frozen=True)
class SeriesHeader:
    """What every slice of one series shares: its identity and how stored values map to the modality's units."""

    series_uid: str
    study_uid: str
    modality: str = "CT"
    description: str = ""
    series_number: int = 1
    intercept: float = -1024.0
    slope: float = 1.0


def write_dicom_slice(path: Path, stored: np.ndarray, header: SeriesHeader, *, instance: int, position, orientation,
                      pixel_spacing, thickness: Optional[float] = None) -> None:
    """One single-frame DICOM image (CT Image Storage, or MR/PET with the matching SOP class) of the
    series ``header`` describes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian

    sop_class = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4",
                 "PT": "1.2.840.10008.5.1.4.1.1.128"}[header.modality]
    study_uid, series_uid = header.study_uid, header.series_uid
    instance_uid = f"{series_uid}.{instance}"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(instance_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, instance_uid
    ds.PatientName, ds.PatientID = "Phantom^Generated", "GEN001"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.FrameOfReferenceUID = f"{study_uid}.0"
    ds.Modality, ds.SeriesNumber, ds.SeriesDescription = header.modality, header.series_number, header.description
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8f}" for v in orientation]
    ds.PixelSpacing = [f"{v:.6f}" for v in pixel_spacing]
    if thickness is not None:
        ds.SliceThickness = f"{thickness:.4f}"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
    ds.RescaleIntercept, ds.RescaleSlope = f"{header.intercept:g}", f"{header.slope:g}"
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def write_dicom_series(folder: Path, value_at: Callable[[np.ndarray], np.ndarray], *,
                       positions: Sequence[Sequence[float]],
                       orientation: Union[Sequence[float], Sequence[Sequence[float]]] = (1, 0, 0, 0, 1, 0),
                       pixel_spacing=(4.0, 4.0), matrix: tuple[int, int] = (40, 48), series: int = 1,
                       description: str = "CT generated", modality: str = "CT", intercept: float = -1024.0) -> str:
    """A series of single-frame files whose pixel values are ``value_at(points)`` at each pixel's
    DICOM position (``points``: (..., 3) LPS mm; values in the modality's units, e.g. HU for CT,
    stored as int16 through the rescale intercept). ``orientation`` is the ImageOrientationPatient of
    every slice, or one per slice; ``matrix`` is (rows, columns). Files are named in a shuffled order
    so that nothing depends on the file order. Returns the SeriesInstanceUID."""
    folder.mkdir(parents=True, exist_ok=True)
    header = SeriesHeader(series_uid=f"{UID_ROOT}.2.{series}", study_uid=f"{UID_ROOT}.1", modality=modality,
                          description=description, series_number=series, intercept=intercept)
    # one orientation for every slice, or one per slice
    orientations = np.broadcast_to(np.reshape(orientation, (-1, 6)), (len(positions), 6)).tolist()
    order = np.random.default_rng(series).permutation(len(positions))
    for k, position in enumerate(positions):
        points = pixel_positions(position, orientations[k], pixel_spacing, *matrix)
        stored = np.round(value_at(points) - intercept).astype(np.int16)
        write_dicom_slice(folder / f"IM{series:02d}_{order[k]:04d}.dcm", stored, header, instance=k + 1,
                          position=position, orientation=orientations[k], pixel_spacing=pixel_spacing, thickness=2.5)
    return header.series_uid


def tilted_positions(count: int, table_step_mm: float, first=(-94.0, -94.0, 0.0)) -> list:
    """Slice positions of a gantry-tilted acquisition: the table moves along z by a fixed step,
    whatever the tilt of the image plane."""
    return [tuple(np.asarray(first) + k * np.array([0.0, 0.0, table_step_mm])) for k in range(count)]


def tilted_orientation(tilt_degrees: float) -> tuple:
    """ImageOrientationPatient of an axial plane tilted about the patient's left-right axis."""
    t = np.deg2rad(tilt_degrees)
    return (1.0, 0.0, 0.0, 0.0, float(np.cos(t)), float(-np.sin(t)))
