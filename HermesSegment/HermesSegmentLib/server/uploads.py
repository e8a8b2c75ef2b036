"""Uploaded images onto the server's disk, checked before any job is queued.

A client's file name only selects one of the accepted endings (:data:`UPLOAD_SUFFIXES`); the
file itself is stored as ``input<ending>`` in the job's folder, and the members of a zipped DICOM
series as ``dicom/00000.dcm``, ``dicom/00001.dcm``, ... whatever they were called. So no name sent
by a client ever becomes a path. Sizes are counted while copying (never taken from headers), so a
zip bomb stops at the limit. The voxel count is read from the image header before the image is.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import IO

import SimpleITK as sitk

from ..errors import HermesError
from ..image_files import image_header
from .protocol import DICOM_ZIP_SUFFIX, UPLOAD_SUFFIXES

MAX_DICOM_FILES = 20_000
CHUNK = 1 << 20


class UploadTooLarge(HermesError):
    """An upload over the server's byte or voxel limit (HTTP 413)."""


def upload_suffix(filename: str) -> str:
    """The accepted ending of ``filename`` (lower case), or :class:`HermesError` naming the accepted ones."""
    lower = (filename or "").lower()
    for suffix in UPLOAD_SUFFIXES:
        if lower.endswith(suffix):
            return suffix
    raise HermesError(f"cannot tell the format of the upload {filename[-60:]!r}; send a file ending in "
                      f"{', '.join(UPLOAD_SUFFIXES)} (.zip: the files of one DICOM series)")


def copy_limited(source: IO[bytes], destination: Path, max_bytes: int) -> int:
    """Copy ``source`` into a new file ``destination``; :class:`UploadTooLarge` past ``max_bytes``."""
    written = 0
    with open(destination, "xb") as target:
        while chunk := source.read(CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise UploadTooLarge(f"the upload is larger than this server's limit of {_mb(max_bytes)}; "
                                     "crop the image or ask the server's administrator to raise --max-upload-mb")
            target.write(chunk)
    return written


def unpack_dicom_zip(archive: Path, folder: Path, max_bytes: int) -> Path:
    """Extract the files of ``archive`` into ``folder`` under numbered names; returns ``folder``.

    At most :data:`MAX_DICOM_FILES` files and ``max_bytes`` uncompressed bytes in all.
    """
    try:
        with zipfile.ZipFile(archive) as zipped:
            members = [m for m in zipped.infolist() if not m.is_dir()]
            if not members:
                raise HermesError("the zip archive is empty; zip the files of one DICOM series")
            if len(members) > MAX_DICOM_FILES:
                raise UploadTooLarge(f"the zip archive holds {len(members)} files; a DICOM series of at most "
                                     f"{MAX_DICOM_FILES} files is accepted")
            folder.mkdir()
            left = max_bytes
            for number, member in enumerate(members):
                with zipped.open(member) as source:
                    left -= copy_limited(source, folder / f"{number:05d}.dcm", left)
    except zipfile.BadZipFile:
        raise HermesError("the upload ends in .zip but is not a readable zip archive; "
                          "zip the DICOM files again") from None
    except (RuntimeError, NotImplementedError) as error:  # encrypted members, unknown compression
        raise HermesError(f"cannot extract the zip archive ({error}); zip the DICOM files without a password "
                          "using standard (deflate) compression") from None
    return folder


def image_voxels(path: Path) -> int:
    """Voxels of the image at ``path`` (a file, or a folder holding one DICOM series), from headers only."""
    first, count = path, 1
    if path.is_dir():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
        if not series:
            raise HermesError("the zip archive holds no DICOM series; zip the files of one series")
        files = max((sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), s) for s in series), key=len)
        first, count = Path(files[0]), len(files)
    reader = image_header(first)
    if reader is None:
        raise HermesError("cannot read the image header (unsupported format or corrupt file); "
                          f"send NIfTI, NRRD, MHA or a zipped DICOM series ({', '.join(UPLOAD_SUFFIXES)})")
    voxels = count
    for size in reader.GetSize():
        voxels *= max(int(size), 1)
    return voxels * max(reader.GetNumberOfComponents(), 1)


def store_upload(source: IO[bytes], filename: str, folder: Path, *, max_bytes: int, max_voxels: int) -> Path:
    """Store an uploaded image in the job ``folder`` and check it; returns what ``read_image`` takes.

    Raises :class:`HermesError` for a format that is not accepted or an unreadable header, and
    :class:`UploadTooLarge` over ``max_bytes`` (uploaded or unzipped) or ``max_voxels``.
    """
    suffix = upload_suffix(filename)
    stored = folder / f"input{suffix}"
    copy_limited(source, stored, max_bytes)
    if suffix == DICOM_ZIP_SUFFIX:
        image_path = unpack_dicom_zip(stored, folder / "dicom", max_bytes)
        stored.unlink()
    else:
        image_path = stored
    voxels = image_voxels(image_path)
    if voxels > max_voxels:
        raise UploadTooLarge(f"the image has {voxels:,} voxels; this server accepts at most {max_voxels:,} "
                             "(crop or downsample it first)")
    return image_path


def remove_tree(path: Path) -> None:
    """Delete a job folder; a folder that is already gone is fine."""
    shutil.rmtree(path, ignore_errors=True)


def _mb(size: int) -> str:
    return f"{size / (1 << 20):.0f} MB" if size >= 1 << 20 else f"{size} bytes"
