"""Evaluating segmentations against ground truth: Dice, HD95 and surface Dice per (case, target).

The metrics are MONAI's (``compute_dice``, ``compute_hausdorff_distance`` with percentile 95,
``compute_surface_dice``: the functions behind ``DiceMetric``, ``HausdorffDistanceMetric`` and
``SurfaceDiceMetric``), computed in millimetres with the image spacing. Conventions that MONAI
leaves open (it returns NaN with a warning):

- both masks empty (target absent and not predicted): Dice 1, HD95 0 mm, surface Dice 1;
- exactly one mask empty: Dice 0, surface Dice 0, HD95 ``inf`` (there is no surface to measure
  to). The CSV says ``inf``; :func:`summarize` leaves non-finite values out of the means and
  counts them.

Speed: the metrics run on the union bounding box of both masks plus a one-voxel margin, so a
small organ in a 512x512x300 CT costs what its box costs. This does not change the result:
MONAI crops to the same box itself and treats everything outside the image as background.

Where masks come from (:func:`load_masks`):

- ``.seg.nrrd`` (ours or Slicer's): one mask per segment, overlaps kept. The target key is the
  segment ID when it is a vocabulary target, else the segment name when that is one, else the
  ID as written.
- a label map (NIfTI/NRRD/MHA, one value per voxel) described by our JSON sidecar
  ``<stem>.json`` (:func:`HermesSegmentLib.outputs.write_label_map_nifti`), or by a label table
  given with ``labels=`` (an nnU-Net ``dataset.json``: ``"labels": {name: value or [values]}``,
  or a phantom ``*_truth.json``). Names are normalised to vocabulary keys where they are known
  targets ("Kidney_Left" -> ``kidney_left``); other names are kept as written.
- the per-target files of our sidecar (``overlap_policy: per_target``): pass the sidecar
  ``<stem>.json`` itself, or the folder holding it.

One label per voxel cannot say that a voxel is both liver and liver tumour. In a label map the
tumour label hides the liver beneath it, but the liver *target* is the whole organ, tumour
included (the phantom ground truth is defined that way, see
:data:`HermesSegmentLib.phantoms.CONTAINS` and ``target_masks``). So in every label map,
a container target's mask also takes the values of the targets it contains when the table lists
them: liver = liver ∪ liver_tumor. The same holds for our own priority label maps, where a later
tumour label hides the liver prediction under it. ``.seg.nrrd`` files store overlaps and are
taken as they are.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from .errors import HermesError

PathLike = Union[str, Path]

#: Columns of the metrics CSV, in order.
METRIC_COLUMNS = ("case", "target", "dice", "hd95_mm", "surface_dice", "pred_ml", "truth_ml")

#: File endings that hold a case (longest first, so ".seg.nrrd" wins over ".nrrd").
CASE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".mha")
_CHANNEL = "_0000"  # nnU-Net's image channel suffix: case_0007_0000.nii.gz is case_0007

# Geometry tolerances: NIfTI stores float32, so the same grid written by two tools differs in the
# 6th-7th significant digit; a real difference (another spacing, a shifted origin) is far larger.
_SPACING_RTOL = 1e-4
_ORIGIN_TOL_VOXELS = 0.01
_DIRECTION_ATOL = 1e-4


# --------------------------------------------------------------------------------------------
# Metrics


def evaluate_masks(
    pred: Mapping[str, np.ndarray],
    truth: Mapping[str, np.ndarray],
    spacing_zyx: Sequence[float],
    tolerance_mm: float = 2.0,
) -> List[dict]:
    """Metrics for every target of ``truth``, in ``truth``'s order.

    Args:
        pred: {target key: bool/0-1 array [z, y, x]}; a target missing here is an empty prediction.
        truth: {target key: bool/0-1 array [z, y, x]}, same shapes as ``pred``.
        spacing_zyx: voxel size in mm, in array axis order.
        tolerance_mm: surface Dice tolerance (a surface voxel within it counts as agreeing).
    Returns:
        One dict per target: ``target``, ``dice``, ``hd95_mm``, ``surface_dice``, ``pred_ml``,
        ``truth_ml`` (floats; see the module docstring for empty masks).
    """
    spacing = tuple(float(s) for s in spacing_zyx)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing_zyx must be three positive numbers, got {spacing_zyx!r}")
    if not tolerance_mm > 0:
        raise ValueError(f"tolerance_mm must be positive, got {tolerance_mm!r}")
    voxel_ml = math.prod(spacing) / 1000.0
    rows = []
    for key, gt in truth.items():
        gt = np.asarray(gt, dtype=bool)
        pr = np.asarray(pred[key], dtype=bool) if key in pred else np.zeros(gt.shape, dtype=bool)
        if pr.shape != gt.shape or gt.ndim != 3:
            raise ValueError(f"{key}: prediction {pr.shape} and truth {gt.shape} must be equal 3D shapes")
        rows.append({"target": key, **_metrics(pr, gt, spacing, tolerance_mm),
                     "pred_ml": int(np.count_nonzero(pr)) * voxel_ml,
                     "truth_ml": int(np.count_nonzero(gt)) * voxel_ml})
    return rows


def _metrics(pred: np.ndarray, truth: np.ndarray, spacing: Tuple[float, ...],
             tolerance_mm: float) -> Dict[str, float]:
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return {"dice": 1.0, "hd95_mm": 0.0, "surface_dice": 1.0}
    if has_pred != has_truth:
        return {"dice": 0.0, "hd95_mm": math.inf, "surface_dice": 0.0}

    try:
        import torch
        from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
    except ImportError:
        raise HermesError("evaluation needs MONAI; install it with `pip install monai` "
                          "(or the extra: pip install hermes-segment[train])") from None
    box = _union_box(pred, truth, margin=1)
    # [batch, channel, z, y, x]; float as MONAI's metrics expect one-hot float tensors.
    p = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None].float()
    g = torch.from_numpy(np.ascontiguousarray(truth[box]))[None, None].float()
    with warnings.catch_warnings():
        # MONAI warns about a deprecated argument that it passes itself; nothing for a user to do.
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        dice = compute_dice(p, g, include_background=True, ignore_empty=False)
        hd95 = compute_hausdorff_distance(p, g, include_background=True, percentile=95,
                                          spacing=list(spacing))
        nsd = compute_surface_dice(p, g, class_thresholds=[tolerance_mm], include_background=True,
                                   spacing=list(spacing))
    return {"dice": float(dice), "hd95_mm": float(hd95), "surface_dice": float(nsd)}


def _union_box(a: np.ndarray, b: np.ndarray, margin: int) -> Tuple[slice, ...]:
    """Slices of the bounding box of ``a | b`` grown by ``margin`` voxels (clipped to the array)."""
    box = []
    for axis in range(a.ndim):
        other = tuple(i for i in range(a.ndim) if i != axis)
        hits = np.flatnonzero(a.any(axis=other) | b.any(axis=other))
        box.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, a.shape[axis])))
    return tuple(box)


def summarize(rows: Sequence[Mapping[str, object]]) -> List[dict]:
    """Per-target means of ``rows`` (as :func:`evaluate_masks` or the CSV give them).

    Returns one dict per target (first-seen order): ``target``, ``cases``, and for each metric
    ``<metric>`` (the mean over finite values, NaN when there are none) and ``<metric>_left_out``
    (how many values were not finite).
    """
    by_target: Dict[str, List[Mapping[str, object]]] = {}
    for row in rows:
        by_target.setdefault(str(row["target"]), []).append(row)
    out = []
    for target, group in by_target.items():
        entry: dict = {"target": target, "cases": len(group)}
        for metric in ("dice", "hd95_mm", "surface_dice"):
            values = np.array([float(r[metric]) for r in group], dtype=float)
            finite = values[np.isfinite(values)]
            entry[metric] = float(finite.mean()) if finite.size else math.nan
            entry[f"{metric}_left_out"] = int(values.size - finite.size)
        out.append(entry)
    return out


def write_metrics_csv(path: PathLike, rows: Sequence[Mapping[str, object]]) -> Path:
    """Write ``rows`` (keys :data:`METRIC_COLUMNS`) as CSV, atomically; return the path.

    Metrics are rounded to 4 decimals (Dice, surface Dice), 3 (HD95 mm) and 3 (mL); non-finite
    values are written as ``nan`` / ``inf``.
    """
    from .atomic import atomic_paths

    digits = {"dice": 4, "surface_dice": 4, "hd95_mm": 3, "pred_ml": 3, "truth_ml": 3}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (round(float(v), digits[k]) if k in digits else v) for k, v in row.items()})
    path = Path(path)
    if not path.parent.exists():
        raise HermesError(f"{path}: the folder {path.parent} does not exist; create it or choose another --out")
    with atomic_paths([path]) as (temp,):
        temp.write_text(buffer.getvalue(), encoding="utf-8")
    return path


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
        return tuple(float(s) for s in self.reference.GetSpacing()[::-1])


def target_key(*names: str) -> str:
    """The vocabulary key of the first of ``names`` that is a known target, else ``names[0]``."""
    from . import vocabulary

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
    Container targets take the values of the targets they contain (module docstring).
    """
    from .phantoms import CONTAINS

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
        for name, values in pairs:
            values = tuple(int(v) for v in values if int(v) != 0)
            if values:
                key = target_key(str(name))
                table[key] = tuple(dict.fromkeys(table.get(key, ()) + values))
    except (KeyError, TypeError, ValueError):
        raise HermesError(f"{where}: no usable \"labels\" table (expected {{name: value}} as in an "
                          "nnU-Net dataset.json, or a HermesSegment sidecar); check the file") from None
    for outer, inners in CONTAINS.items():
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


def case_name(path: PathLike) -> str:
    """The case a file belongs to: its name without :data:`CASE_SUFFIXES` (or ``.json``).

    An nnU-Net channel suffix (``case_0007_0000``) is not removed here, because case names may
    end in the same pattern (``case_0000``); :func:`match_cases` accepts it when pairing.
    """
    name = Path(path).name
    for suffix in CASE_SUFFIXES + (".json",):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


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
    from .outputs import read_seg_nrrd

    masks, reference = read_seg_nrrd(path)
    shape = tuple(reference.GetSize()[::-1])
    by_key = {}
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
    from .imaging import read_image, reference_geometry

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
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise HermesError(f"{path}: cannot read the label map (missing or corrupt); check the file") from None
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
    def fmt(values: Sequence[float]) -> str:
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


# --------------------------------------------------------------------------------------------
# Cases


def find_cases(path: PathLike) -> Dict[str, Path]:
    """{case name: file} for a file or a folder (not recursive).

    In a folder: ``.seg.nrrd`` / NIfTI / NRRD / MHA files, plus per-target sidecars (whose listed
    files then belong to that case). Hidden and ``.partial-`` files are skipped; two files for one
    case are an error.
    """
    path = Path(path)
    if not path.exists():
        raise HermesError(f"{path}: no such file or folder; check the path")
    if path.is_file():
        return {case_name(path): path}
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    claimed = set()
    cases: Dict[str, Path] = {}
    for json_file in (p for p in files if p.name.lower().endswith(".json")):
        try:
            entries = json.loads(json_file.read_text(encoding="utf-8")).get("labels")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            continue  # not ours: some other JSON in the folder
        if isinstance(entries, list) and entries and all(isinstance(e, Mapping) and "file" in e for e in entries):
            cases[case_name(json_file)] = json_file
            claimed.update(str(e["file"]) for e in entries)
    for file in files:
        lower = file.name.lower()
        if file.name in claimed or not lower.endswith(CASE_SUFFIXES):
            continue
        name = case_name(file)
        if name in cases:
            raise HermesError(f"{path}: two files for case {name!r} ({cases[name].name}, {file.name}); "
                              "keep one per case")
        cases[name] = file
    if not cases:
        raise HermesError(f"{path}: no segmentation files (.seg.nrrd, .nii.gz, .nii, .nrrd, .mha) found")
    return cases


def match_cases(pred: PathLike, truth: PathLike) -> Tuple[List[Tuple[str, Path, Path]], List[str], List[str]]:
    """Pair predictions with ground truth by case name.

    Names match when equal, or when one is the other plus the nnU-Net channel suffix ``_0000``
    (``case_0007_0000`` pairs with ``case_0007``). Two files are paired whatever their names.
    Returns (pairs [(truth case name, pred file, truth file)] sorted by case, truth cases without
    a prediction, prediction cases without truth). No pair at all is a :class:`HermesError`.
    """
    pred_cases, truth_cases = find_cases(pred), find_cases(truth)
    if Path(pred).is_file() and Path(truth).is_file():
        (truth_name, truth_file), = truth_cases.items()
        return [(truth_name, next(iter(pred_cases.values())), truth_file)], [], []
    pairs = {}
    for name, file in pred_cases.items():
        for candidate in (name, name[: -len(_CHANNEL)] if name.endswith(_CHANNEL) else None, name + _CHANNEL):
            if candidate in truth_cases and candidate not in pairs:
                pairs[candidate] = (name, file)
                break
    if not pairs:
        raise HermesError(f"no case name is in both {pred} and {truth} (e.g. {sorted(pred_cases)[0]!r} vs "
                          f"{sorted(truth_cases)[0]!r}); files are matched by name without extension and _0000")
    used = {name for name, _ in pairs.values()}
    return ([(case, pairs[case][1], truth_cases[case]) for case in sorted(pairs)],
            sorted(set(truth_cases) - set(pairs)), sorted(set(pred_cases) - used))


def evaluate_case(case: str, pred: MaskSet, truth: MaskSet, targets: Sequence[str],
                  tolerance_mm: float = 2.0) -> List[dict]:
    """Rows (:data:`METRIC_COLUMNS`) for ``targets`` of one case, one target at a time in memory.

    The grids must match (:func:`check_same_grid`). A target the truth does not annotate is
    skipped (partially labelled datasets); one the prediction lacks is an empty prediction.
    """
    check_same_grid(pred.reference, truth.reference, f"{case}: {pred.path.name} vs {truth.path.name}")
    rows = []
    for key in targets:
        if key not in truth.targets:
            continue
        prediction = {key: pred.mask(key)} if key in pred.targets else {}
        rows += [{"case": case, **row} for row in
                 evaluate_masks(prediction, {key: truth.mask(key)}, truth.spacing_zyx, tolerance_mm)]
    return rows
