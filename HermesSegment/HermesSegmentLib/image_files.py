"""Image files: what ITK's readers let through, and how a failed read is told.

ITK's NIfTI reader (niftilib) pads a short data block with zeros and replaces NaN and infinite
values with 0, without an error: a ``.nii.gz`` cut in half by an interrupted copy is read as a
half-empty scan. :func:`check_nifti_data` streams the data block once through nibabel's opener
(gzip, bzip2, zstd handled) and refuses a short or corrupt block and non-finite values. NRRD and
MetaImage readers do raise on a short block; :func:`read_error` turns any failed read into one line
that says whether the header, the data or the memory was at fault. A compressed NRRD or MetaImage
data block damaged inside its stream is read without an error either (teem does not check gzip's
CRC; MetaIO prints "Uncompress failed" and goes on): :func:`check_detached_or_compressed_data`
checks the stream's own checksum, and names a header's missing data file.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import SimpleITK as sitk

from .errors import HermesError
from .memory import is_memory_error, out_of_memory

NIFTI_SUFFIXES = (".nii", ".nii.gz", ".hdr", ".hdr.gz")
_CHUNK_BYTES = 16 << 20  # a multiple of every voxel size


def damaged(path: Path, detail: str) -> HermesError:
    return HermesError(f"{path}: the image data is truncated or damaged ({detail}); the file is incomplete or "
                       "corrupt (an interrupted copy or download?): copy or export it again")


def check_nifti_data(path: Path, frame: Optional[int] = None) -> None:
    """Raise :class:`HermesError` when the NIfTI's data block is short or corrupt, or holds NaN or
    infinite values (which ITK's reader would silently turn into 0); of a 4D image (or a vector
    image, one volume per component) given a ``frame``, only that frame's values count."""
    import nibabel
    from nibabel.openers import ImageOpener

    try:
        image: Any = nibabel.load(str(path))  # a NIfTI-1/2 or Analyze image: header, dtype, data offset
    except Exception as error:  # nibabel raises many types for a bad header that ITK could read
        raise damaged(path, f"header: {str(error).splitlines()[0][:80]}") from None
    dtype = image.get_data_dtype()
    expected = int(np.prod(image.shape, dtype=np.int64)) * dtype.itemsize
    data_file = str(image.file_map["image"].filename)
    floating = dtype.kind in "fc"
    volume = int(np.prod(image.shape[:3], dtype=np.int64))
    extra = [n for n in image.shape[3:] if n > 1]
    # The elements whose values must be finite: the asked frame's volume (x, y, z fastest), else all.
    first, last = (frame * volume, (frame + 1) * volume) if frame is not None and len(extra) == 1 else (0, None)
    seen = 0
    try:
        with ImageOpener(data_file, "rb") as stream:
            stream.seek(int(image.dataobj.offset))
            while seen < expected:
                block = stream.read(min(_CHUNK_BYTES, expected - seen))
                if not block:
                    break
                if floating:
                    start = seen // dtype.itemsize
                    values = np.frombuffer(block[: len(block) - len(block) % dtype.itemsize], dtype=dtype)
                    values = values[max(first - start, 0):None if last is None else max(last - start, 0)]
                    if not np.isfinite(values).all():
                        what = "NaN" if np.isnan(values).any() else "infinite"
                        raise HermesError(f"{path}: image contains {what} values; fix or replace them "
                                          "(e.g. with the background value) and retry")
                seen += len(block)
            if data_file.endswith((".gz", ".bz2", ".zst")):
                stream.read(1)  # reach the end of the compressed stream: its length and checksum are checked
    except (EOFError, zlib.error, OSError) as error:
        raise damaged(path, str(error).splitlines()[0][:80] if str(error) else type(error).__name__) from None
    if seen < expected:
        raise damaged(path, f"{seen} of {expected} data bytes")


@dataclass(frozen=True)
class DataBlock:
    """Where a NRRD or MetaImage header's voxels are: ``file`` (the header itself when attached)
    from byte ``offset`` on (``exact``: the voxels start there, no byte or line skip), and whether they
    are zlib/gzip ``compressed``."""

    file: Path
    offset: int
    compressed: bool
    exact: bool = True


def data_block(path: Path) -> Optional[DataBlock]:
    """The data block of a NRRD (``.nrrd``/``.nhdr``) or MetaImage (``.mha``/``.mhd``) file, from its
    header; None for other files and for what this does not follow (file lists, file patterns)."""
    name = path.name.lower()
    if not name.endswith((".nrrd", ".nhdr", ".mha", ".mhd")):
        return None
    nrrd = name.endswith((".nrrd", ".nhdr"))
    fields: dict[str, str] = {}
    with open(path, "rb") as stream:
        if nrrd and not stream.read(7).startswith(b"NRRD000"):
            return None
        stream.seek(0)
        while True:
            line = stream.readline(1 << 16)
            if not line or (nrrd and not line.strip()):
                break  # the end of a detached header, or the blank line before attached data
            text = line.decode("latin-1").strip()
            key, sep, value = text.partition(":" if nrrd else "=")
            if not sep or text.startswith("#") or (nrrd and value.startswith("=")):
                continue
            fields[key.strip().lower().replace(" ", "")] = value.strip()
            if not nrrd and key.strip().lower() == "elementdatafile":
                break  # the last field of a MetaImage header
        offset = stream.tell()
    data = fields.get("datafile" if nrrd else "elementdatafile")
    if nrrd:
        compressed = fields.get("encoding", "").lower() in ("gz", "gzip")
    else:
        compressed = fields.get("compresseddata", "").lower() == "true"
    exact = not {"byteskip", "lineskip", "headersize"} & set(fields) and fields.get("encoding", "raw") == "raw"
    if data is None or (not nrrd and data.upper() == "LOCAL"):
        return DataBlock(path, offset, compressed, exact) if (nrrd or data) else None
    if data.upper().startswith("LIST") or "%" in data or " " in data:
        return None  # several data files
    return DataBlock(path.parent / data, 0, compressed, exact)


def check_detached_or_compressed_data(path: Path) -> None:
    """Raise :class:`HermesError` when a NRRD/MetaImage header's data file is missing, or when its
    compressed data block is short or fails its checksum."""
    try:
        block = data_block(path)
    except OSError:
        return
    if block is None:
        return
    if not block.file.is_file():
        raise HermesError(f"{path}: its data file {block.file.name} is missing (the header names it); copy the data "
                          "file next to the header, or give a single-file image (.nrrd, .nii.gz, .mha)")
    if not block.compressed:
        expected = image_bytes(path) if block.exact else None
        present = block.file.stat().st_size - block.offset
        if expected is not None and present < expected:
            raise damaged(path, f"{max(present, 0)} of {expected} data bytes")
        return
    inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # zlib or gzip, by the stream's header
    try:
        with open(block.file, "rb") as stream:
            stream.seek(block.offset)
            while not inflate.eof:
                chunk = stream.read(_CHUNK_BYTES)
                if not chunk:
                    raise damaged(path, "the compressed data ends early")
                while chunk and not inflate.eof:
                    inflate.decompress(chunk, _CHUNK_BYTES)
                    chunk = inflate.unconsumed_tail
    except zlib.error as error:
        raise damaged(path, f"compressed data: {error}") from None


def image_header(path: Union[Path, str]) -> Optional[sitk.ImageFileReader]:
    """A reader holding the file's header (size, spacing, metadata; no voxels read), or None when
    no ITK reader can read that header (not an image, or a damaged header)."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    return reader


def image_bytes(path: Path) -> Optional[int]:
    """Bytes the image needs in memory, from its header; None when the header cannot be read."""
    reader = image_header(path)
    if reader is None:
        return None
    voxels = int(np.prod(reader.GetSize(), dtype=np.int64)) * reader.GetNumberOfComponents()
    return voxels * np.dtype(sitk.GetArrayFromImage(sitk.Image([1] * reader.GetDimension(),
                                                                reader.GetPixelID())).dtype).itemsize


def read_error(path: Path, error: RuntimeError) -> HermesError:
    """One line for ``sitk.ReadImage`` failing on ``path``: out of memory (with the image's size),
    a damaged data block (the header reads), or not an image this reader knows."""
    if is_memory_error(error):
        return out_of_memory("reading the image", error, image_bytes(path))
    try:
        check_detached_or_compressed_data(path)
    except HermesError as named:
        return named
    broken_stream = _gzip_error(path) if path.name.lower().endswith(".gz") else None
    if broken_stream:
        return damaged(path, broken_stream)
    if image_bytes(path) is not None:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else ""
        return damaged(path, reason.split("ERROR:")[-1].strip()[:80] or "the reader stopped")
    return HermesError(f"{path}: cannot read the image (unsupported format or corrupt file); "
                       "use NIfTI, NRRD, MHA/MHD or a DICOM series folder")


def _gzip_error(path: Path) -> Optional[str]:
    """What is wrong with a gzip file's stream (short, corrupt, bad checksum), or None."""
    import gzip

    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            return None  # not gzip at all: not a damaged image, an unknown file
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(_CHUNK_BYTES):
                pass
    except (EOFError, zlib.error, OSError) as error:
        return str(error).splitlines()[0][:80] if str(error) else type(error).__name__
    return None


def is_dicom_file(path: Path) -> bool:
    """True for a DICOM file (the 'DICM' marker after the 128-byte preamble, or GDCM reads it)."""
    with open(path, "rb") as f:
        if f.read(132)[128:132] == b"DICM":
            return True
    reader = image_header(path)
    return reader is not None and reader.GetImageIO() == "GDCMImageIO"
