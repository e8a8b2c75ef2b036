"""Masks from files: .seg.nrrd, label maps with a sidecar or a label table, per-target files; grid checks.

- ``.seg.nrrd`` (ours or Slicer's): one mask per segment, overlaps kept; the target key is the segment
  ID when it is a vocabulary target, else the segment name when that is one, else the ID as written.
- a label map (NIfTI/NRRD/MHA) described by our JSON sidecar ``<stem>.json`` or by a label table
  (an nnU-Net ``dataset.json``, a phantom ``*_truth.json``); names are normalised to vocabulary keys.
- the per-target files of our ``per_target`` sidecar: pass the sidecar itself.

In a label map one label per voxel hides overlaps, so a container target takes the values of the
targets it contains (liver = liver ∪ liver_tumor); see docs/architecture.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Mapping, Optional, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .. import vocabulary
from ..errors import HermesError
from ..image_files import image_header
from ..read import case_name

PathLike = Union[str, Path]


# Geometry tolerances: NIfTI stores float32, so the same grid written by two tools differs in the
# 6th-7th significant digit; a real difference (another spacing, a shifted origin) is far larger.
_SPACING_RTOL = 1e-4
_ORIGIN_TOL_VOXELS = 0.01
_DIRECTION_ATOL = 1e-4


# --------------------------------------------------------------------------------------------
# Masks from files


@dataclass
class MaskSet:
    """The target masks of one file (or one sidecar's files), all on one grid.

    ``targets``: target keys in file order; ``reference``: a zero image holding the grid;
    ``mask(key)`` gives the full-grid bool [z, y, x] mask (built on demand, so that only one
    target's full-size mask needs to be in memory at a time).
    """

    path: Path
    reference: sitk.Image
    targets: Tuple[str, ...]
    _get: Callable[[str], np.ndarray] = field(repr=False)

    def mask(self, key: str) -> np.ndarray:
        return self._get(key)

    @property
    def spacing_zyx(self) -> Tuple[float, float, float]:
        x, y, z = self.reference.GetSpacing()
        return float(z), float(y), float(x)


def target_key(*names: str) -> str:
    """The vocabulary key of the first of ``names`` that is a known target, else ``names[0]``."""
    for name in names:
        try:
            return vocabulary.target(name).key
        except HermesError:
            continue
    return names[0]


def read_label_table(source: Union[PathLike, Mapping]) -> Dict[str, Tuple[int, ...]]:
    """{target key: label values} from a label table (a JSON file or its parsed content).

    Accepts our sidecar (``"labels": [{"value", "key"}, ...]``), an nnU-Net ``dataset.json`` or a
    phantom ``*_truth.json`` (``"labels": {name: value or [values]}``; value 0 is background).
    Container targets take the values of the targets they contain (``vocabulary.contained_targets``).
    """
    where = source if not isinstance(source, Mapping) else "label table"
    doc = source if isinstance(source, Mapping) else _read_json(Path(source))
    labels = doc.get("labels") if isinstance(doc, Mapping) else None
    try:
        if isinstance(labels, list):
            pairs = [(e["key"], [e["value"]]) for e in labels]
        elif isinstance(labels, Mapping):
            pairs = [(name, value if isinstance(value, list) else [value]) for name, value in labels.items()]
        else:
            raise TypeError
        table: Dict[str, Tuple[int, ...]] = {}
        for name, raw_values in pairs:
            values = tuple(int(v) for v in raw_values if int(v) != 0)
            if values:
                key = target_key(str(name))
                table[key] = tuple(dict.fromkeys(table.get(key, ()) + values))
    except (KeyError, TypeError, ValueError):
        raise HermesError(f"{where}: no usable \"labels\" table (expected {{name: value}} as in an "
                          "nnU-Net dataset.json, or a HermesSegment sidecar); check the file") from None
    for outer, inners in vocabulary.contained_targets().items():
        if outer in table:
            extra = tuple(v for inner in inners for v in table.get(inner, ()))
            table[outer] = tuple(dict.fromkeys(table[outer] + extra))
    return table


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise HermesError(f"{path}: no such file; check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise HermesError(f"{path}: not a readable JSON file; check it") from None


def load_masks(path: PathLike, labels: Optional[Mapping[str, Tuple[int, ...]]] = None) -> MaskSet:
    """Read one case's masks from ``path`` (see the module docstring for the accepted forms).

    ``labels`` ({key: values}, from :func:`read_label_table`) names the values of a label map
    that has no sidecar of its own; a sidecar, when present, wins.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(".seg.nrrd"):
        return _load_seg_nrrd(path)
    if name.endswith(".json"):
        return _load_per_target(path)
    sidecar = path.with_name(case_name(path) + ".json")
    if sidecar.exists():
        labels = read_label_table(sidecar)
    elif labels is None:
        raise HermesError(f"{path}: a label map without label names; pass --labels dataset.json "
                          "(nnU-Net style \"labels\": {name: value}) or keep its <name>.json sidecar")
    return _load_label_map(path, labels)


def _load_seg_nrrd(path: Path) -> MaskSet:
    from ..writers.seg_nrrd import read_seg_nrrd

    masks, reference = read_seg_nrrd(path)
    shape = tuple(reference.GetSize()[::-1])
    by_key: Dict[str, list] = {}
    for m in masks:
        # a second segment for the same target adds to it (Slicer users split structures)
        by_key.setdefault(target_key(m.key, m.name), []).append(m)

    def get(key: str) -> np.ndarray:
        out = np.zeros(shape, dtype=bool)
        for m in by_key[key]:
            if m.array.size:
                out[m.slices] |= m.array
        return out

    return MaskSet(path, reference, tuple(by_key), get)


def _label_array(path: Path) -> Tuple[np.ndarray, sitk.Image]:
    from ..postprocess.to_input_grid import reference_geometry
    from ..read import read_image

    image = read_image(path)
    array = sitk.GetArrayFromImage(image)
    if not np.issubdtype(array.dtype, np.integer):
        rounded = np.rint(array)
        if not np.array_equal(rounded, array):
            raise HermesError(f"{path}: a label map must hold whole numbers (it has fractions); "
                              "is this an image or a probability map rather than labels?")
        array = rounded.astype(np.int64)
    if array.size and array.min() < 0:
        raise HermesError(f"{path}: a label map cannot hold negative values; is this an image "
                          "(e.g. CT in HU) rather than labels? pass the segmentation instead")
    return array, reference_geometry(image)


def _load_label_map(path: Path, labels: Mapping[str, Tuple[int, ...]]) -> MaskSet:
    array, reference = _label_array(path)

    def get(key: str) -> np.ndarray:
        values = labels[key]
        return array == values[0] if len(values) == 1 else np.isin(array, values)

    return MaskSet(path, reference, tuple(labels), get)


def _header_grid(path: Path) -> sitk.Image:
    """The grid of an image file from its header alone (the voxels are read when a mask is)."""
    reader = image_header(path)
    if reader is None:
        raise HermesError(f"{path}: cannot read the label map (missing or corrupt); check the file")
    grid = sitk.Image([int(n) for n in reader.GetSize()], sitk.sitkUInt8)
    grid.SetSpacing(reader.GetSpacing())
    grid.SetOrigin(reader.GetOrigin())
    grid.SetDirection(reader.GetDirection())
    return grid


def _load_per_target(sidecar: Path) -> MaskSet:
    """Our ``per_target`` sidecar: one 0/1 file per target, listed under "file"."""
    entries = _read_json(sidecar).get("labels")
    if not isinstance(entries, list) or not all(isinstance(e, Mapping) and "file" in e for e in entries):
        raise HermesError(f"{sidecar}: not a per-target sidecar (entries with \"file\"); pass the "
                          "label map itself instead of its .json")
    files = {target_key(str(e["key"])): sidecar.with_name(str(e["file"])) for e in entries}
    reference = _header_grid(next(iter(files.values())))

    def get(key: str) -> np.ndarray:
        array, grid = _label_array(files[key])
        check_same_grid(grid, reference, f"{files[key].name} vs the other per-target files")
        return array != 0

    return MaskSet(sidecar, reference, tuple(files), get)


def check_same_grid(a: sitk.Image, b: sitk.Image, what: str) -> None:
    """Raise a one-line :class:`HermesError` unless ``a`` and ``b`` have the same grid (size
    exactly; spacing, origin and direction within float32 storage precision)."""
    def fmt(values: Iterable[float]) -> str:
        return "x".join(f"{v:.4g}" for v in values)

    spacing_a, spacing_b = np.array(a.GetSpacing()), np.array(b.GetSpacing())
    problems = []
    if a.GetSize() != b.GetSize():
        problems.append(f"size {fmt(a.GetSize())} vs {fmt(b.GetSize())}")
    if not np.allclose(spacing_a, spacing_b, rtol=_SPACING_RTOL, atol=0):
        problems.append(f"spacing {fmt(spacing_a)} vs {fmt(spacing_b)} mm")
    if np.any(np.abs(np.subtract(a.GetOrigin(), b.GetOrigin())) > _ORIGIN_TOL_VOXELS * spacing_b.min()):
        problems.append(f"origin {fmt(a.GetOrigin())} vs {fmt(b.GetOrigin())} mm")
    if not np.allclose(a.GetDirection(), b.GetDirection(), rtol=0, atol=_DIRECTION_ATOL):
        problems.append("direction differs")
    if problems:
        raise HermesError(f"{what}: not on the same voxel grid ({'; '.join(problems)}); resample the "
                          "prediction onto the ground-truth image (nearest neighbour) and evaluate again")
