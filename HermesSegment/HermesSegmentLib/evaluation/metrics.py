"""Dice, HD95 and surface Dice per (case, target), in millimetres.

HD95 and surface Dice are MONAI's (``compute_hausdorff_distance`` with percentile 95,
``compute_surface_dice``); Dice is :func:`dice`, the one the trainer, the benchmarks and the tools
use too.

Empty masks (MONAI returns NaN): both empty -> Dice 1, HD95 0 mm, surface Dice 1; exactly one empty
-> Dice 0, surface Dice 0, HD95 ``inf`` (:func:`summarize` leaves non-finite values out of the means
and counts them). The metrics run on the union bounding box of both masks plus a one-voxel margin
(MONAI crops to the same box itself), so a small organ costs what its box costs.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Sequence, Tuple, Union

import numpy as np

from ..errors import HermesError

if TYPE_CHECKING:  # both import SimpleITK, which dice() (the trainer's) must not need
    from .mask_files import MaskSet

PathLike = Union[str, Path]

#: Columns of the metrics CSV, in order.
METRIC_COLUMNS = ("case", "target", "dice", "hd95_mm", "surface_dice", "pred_ml", "truth_ml")


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


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two boolean masks of one shape, 2 |P & T| / (|P| + |T|), exact; 1 when both are empty."""
    total = int(np.count_nonzero(prediction)) + int(np.count_nonzero(truth))
    return 1.0 if total == 0 else 2.0 * int(np.count_nonzero(np.logical_and(prediction, truth))) / total


def _metrics(pred: np.ndarray, truth: np.ndarray, spacing: Tuple[float, ...],
             tolerance_mm: float) -> Dict[str, float]:
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return {"dice": 1.0, "hd95_mm": 0.0, "surface_dice": 1.0}
    if has_pred != has_truth:
        return {"dice": 0.0, "hd95_mm": math.inf, "surface_dice": 0.0}

    try:
        import torch
        from monai.metrics import compute_hausdorff_distance, compute_surface_dice
    except ImportError:
        raise HermesError("evaluation needs MONAI; install it with `pip install monai` "
                          "(or the extra: pip install hermes-segment[train])") from None
    from ..mask import bounding_box

    box = bounding_box(pred, truth, margin=1)
    # [batch, channel, z, y, x]; float as MONAI's metrics expect one-hot float tensors.
    p = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None].float()
    g = torch.from_numpy(np.ascontiguousarray(truth[box]))[None, None].float()
    with warnings.catch_warnings():
        # MONAI warns about a deprecated argument that it passes itself; nothing for a user to do.
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        hd95 = compute_hausdorff_distance(p, g, include_background=True, percentile=95,
                                          spacing=list(spacing))
        nsd = compute_surface_dice(p, g, class_thresholds=[tolerance_mm], include_background=True,
                                   spacing=list(spacing))
    return {"dice": dice(pred[box], truth[box]), "hd95_mm": float(hd95), "surface_dice": float(nsd)}


def summarize(rows: Sequence[Mapping[str, Any]]) -> List[dict]:
    """Per-target means of ``rows`` (as :func:`evaluate_masks` or the CSV give them).

    Returns one dict per target (first-seen order): ``target``, ``cases``, and for each metric
    ``<metric>`` (the mean over finite values, NaN when there are none) and ``<metric>_left_out``
    (how many values were not finite).
    """
    by_target: Dict[str, List[Mapping[str, Any]]] = {}
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


#: A reference contour this many times larger or smaller than the median of its target over the
#: evaluated cases is flagged by :func:`unusual_references`. In OpenKBP's training patients the
#: largest contour of each organ is at most 3.6x its median (larynx; parotids 3.2x) and the two
#: "spinal cords" of 478 and 543 ml among its validation patients are 19-22x (docs/experiments.md, 6j).
UNUSUAL_VOLUME_FACTOR = 4.0
#: ... and only where at least this many cases of the target have a non-empty reference.
UNUSUAL_VOLUME_MIN_CASES = 5


def unusual_references(rows: Sequence[Mapping[str, Any]], factor: float = UNUSUAL_VOLUME_FACTOR,
                       min_cases: int = UNUSUAL_VOLUME_MIN_CASES) -> List[dict]:
    """Reference contours whose volume is far from their target's median: likely another structure
    under the organ's name, or the organ contoured on a few slices only.

    ``rows``: metric rows (:func:`evaluate_masks` or the CSV; ``case``, ``target``, ``truth_ml``).
    Returns one dict per flagged row, largest deviation first: ``case``, ``target``, ``truth_ml``,
    ``median_ml`` (of the target's non-empty references) and ``ratio`` (truth / median). A flag is a
    reason to look at the contour, not a verdict: the rows stay in every mean.
    """
    volumes: Dict[str, List[float]] = {}
    for row in rows:
        if float(row["truth_ml"]) > 0:
            volumes.setdefault(str(row["target"]), []).append(float(row["truth_ml"]))
    flagged = []
    for row in rows:
        group = volumes.get(str(row["target"]), [])
        if len(group) < min_cases or float(row["truth_ml"]) <= 0:
            continue
        median = float(np.median(group))
        ratio = float(row["truth_ml"]) / median
        if ratio >= factor or ratio <= 1 / factor:
            flagged.append({"case": row["case"], "target": str(row["target"]), "truth_ml": float(row["truth_ml"]),
                            "median_ml": median, "ratio": ratio})
    return sorted(flagged, key=lambda f: -abs(math.log(f["ratio"])))


def write_metrics_csv(path: PathLike, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` (keys :data:`METRIC_COLUMNS`) as CSV, atomically; return the path.

    Metrics are rounded to 4 decimals (Dice, surface Dice), 3 (HD95 mm) and 3 (mL); non-finite
    values are written as ``nan`` / ``inf``.
    """
    from ..atomic import atomic_paths

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


def evaluate_case(case: str, pred: MaskSet, truth: MaskSet, targets: Sequence[str],
                  tolerance_mm: float = 2.0) -> List[dict]:
    """Rows (:data:`METRIC_COLUMNS`) for ``targets`` of one case, one target at a time in memory.

    The grids must match (:func:`check_same_grid`). A target the truth does not annotate is
    skipped (partially labelled datasets); one the prediction lacks is an empty prediction.
    """
    from .mask_files import check_same_grid

    check_same_grid(pred.reference, truth.reference, f"{case}: {pred.path.name} vs {truth.path.name}")
    rows = []
    for key in targets:
        if key not in truth.targets:
            continue
        prediction = {key: pred.mask(key)} if key in pred.targets else {}
        rows += [{"case": case, **row} for row in
                 evaluate_masks(prediction, {key: truth.mask(key)}, truth.spacing_zyx, tolerance_mm)]
    return rows
