"""NIfTI label maps: one map where later targets win, or one 0/1 file per target; a JSON sidecar names the labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence, Union

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_paths
from ..errors import HermesError
from ..mask import TargetMask, check_on_grid, image_on_grid
from .base import MARK, SegmentationWriter

PathLike = Union[str, Path]


def write_image(image: sitk.Image, path: Path, what: str) -> None:
    """Write ``image`` compressed, marked as ours (:data:`.base.MARK` and ``what`` it is)."""
    image.SetMetaData("ITK_FileNotes", f"{MARK} {what}")
    sitk.WriteImage(image, str(path), useCompression=True)


# --------------------------------------------------------------------------------------------
# NIfTI


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    raise HermesError(f"{path}: a NIfTI output needs a .nii or .nii.gz name; rename it")


def write_label_map_nifti(
    path: PathLike,
    masks: Sequence[TargetMask],
    reference: sitk.Image,
    *,
    overlap_policy: str = "priority",
) -> List[Path]:
    """Write a NIfTI label map (and its JSON sidecar) on ``reference``'s grid; return the paths.

    ``"priority"``: one file, labels 1..N in the order of ``masks`` (uint8, uint16 above 255);
    where targets overlap the LATER target wins -- list small structures last. The sidecar
    ``<stem>.json`` maps label value -> key, name, color, terminology, and records for each
    target how many of its voxels a later target hid (``hidden_voxels``).
    ``"per_target"``: one uint8 0/1 file per target, ``<stem>_<key>.nii.gz``, nothing hidden,
    plus the same sidecar (label value 1 in every file).
    """
    path = Path(path)
    stem = _nifti_stem(path)
    shape = check_on_grid(masks, reference)
    sidecar = path.with_name(stem + ".json")
    entries: List[Dict[str, Any]] = [{"value": i + 1, "key": m.key, "name": m.name, "color": list(m.color),
                "terminology": m.terminology} for i, m in enumerate(masks)]
    if overlap_policy == "priority":
        dtype = np.uint8 if len(masks) <= 255 else np.uint16
        labels = np.zeros(shape, dtype=dtype)
        hidden = np.zeros(len(masks) + 1, dtype=np.int64)
        for value, mask in enumerate(masks, start=1):
            region = labels[mask.slices]
            hidden += np.bincount(region[mask.array], minlength=len(masks) + 1)
            region[mask.array] = value
        for entry in entries:
            entry["hidden_voxels"] = int(hidden[entry["value"]])
        finals = [path, sidecar]
        with atomic_paths(finals) as (temp, temp_json):
            write_image(image_on_grid(labels, reference), temp, "label map")
            temp_json.write_text(json.dumps({"written_by": MARK, "overlap_policy": "priority: later target wins",
                                             "labels": entries}, indent=2))
        return finals
    if overlap_policy != "per_target":
        raise ValueError(f"unknown overlap_policy {overlap_policy!r}")
    files = [path.with_name(f"{stem}_{m.key}.nii.gz") for m in masks]
    for entry, file in zip(entries, files):
        entry.update(value=1, file=file.name)
    with atomic_paths(files + [sidecar]) as temps:
        for mask, temp in zip(masks, temps):
            write_image(image_on_grid(mask.full(shape).view(np.uint8), reference), temp, "mask")
        temps[-1].write_text(json.dumps({"written_by": MARK, "overlap_policy": "per_target: one file per target",
                                         "labels": entries}, indent=2))
    return files + [sidecar]


class NiftiLabelMapWriter(SegmentationWriter):
    """A NIfTI label map and its JSON sidecar (:func:`write_label_map_nifti`)."""

    name = "nifti"
    suffix = ".nii.gz"
    description = "label map + JSON sidecar"

    def write(self, path: Path, masks: Sequence[TargetMask], reference: sitk.Image, *,
              overlap_policy: str = "priority") -> None:
        write_label_map_nifti(path, masks, reference, overlap_policy=overlap_policy)

    def file_names(self, stem: str, targets: Sequence[str], *, overlap_policy: str = "priority") -> list[str]:
        if overlap_policy == "per_target":
            return [f"{stem}_{key}.nii.gz" for key in targets] + [f"{stem}.json"]
        return [f"{stem}{self.suffix}", f"{stem}.json"]
