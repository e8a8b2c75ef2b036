"""`hermes-segment evaluate`: Dice, HD95 and surface Dice of predictions against ground truth.

    hermes-segment evaluate PRED GT [--targets a,b] [--labels dataset.json] [--tolerance-mm 2]
                            [--out metrics.csv]

PRED and GT are each a file or a folder; folders are paired by case name (file name without
.seg.nrrd/.nii.gz/.nii/.nrrd/.mha and without an nnU-Net channel suffix _0000). Each side is a
.seg.nrrd, a label map with its HermesSegment JSON sidecar, or a label map whose values
``--labels`` names (an nnU-Net dataset.json). Writes one CSV row per (case, target) and prints
the per-target means; reference contours at least 4x larger or smaller than their target's median
volume (another structure under the organ's name, an organ contoured on a few slices) are named in a
note. Conventions for empty masks and overlapping targets:
:mod:`HermesSegmentLib.evaluation`.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from ..errors import HermesError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers the ``evaluate`` subcommand (``func=run``)."""
    parser = subparsers.add_parser(
        "evaluate",
        help="Dice, HD95 and surface Dice of segmentations against ground truth",
        description="Compare predicted segmentations with ground truth, per case and target "
                    "(MONAI metrics, in mm). Both sides must be on the same voxel grid.",
    )
    parser.add_argument("pred", type=Path, help="prediction file or folder")
    parser.add_argument("gt", type=Path, help="ground-truth file or folder")
    parser.add_argument("--targets", help="comma-separated targets (default: every target that is "
                                          "both predicted and annotated, per case)")
    parser.add_argument("--labels", type=Path, metavar="JSON",
                        help="label table for label maps without a sidecar: an nnU-Net dataset.json "
                             "(\"labels\": {name: value})")
    parser.add_argument("--tolerance-mm", type=float, default=2.0, metavar="MM",
                        help="surface Dice tolerance in mm (default 2.0)")
    parser.add_argument("--out", type=Path, default=Path("metrics.csv"),
                        help="CSV to write (default metrics.csv)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Evaluates, writes the CSV, prints the table; returns 0. User mistakes raise HermesError."""
    from .. import evaluation

    if not args.tolerance_mm > 0:
        raise HermesError(f"--tolerance-mm must be positive, got {args.tolerance_mm}")
    _check_out(args.out)
    labels = evaluation.read_label_table(args.labels) if args.labels else None
    requested = None
    if args.targets:
        requested = list(dict.fromkeys(evaluation.target_key(t.strip())
                                       for t in args.targets.split(",") if t.strip()))
    pairs, no_pred, no_truth = evaluation.match_cases(args.pred, args.gt)
    if no_pred:
        print(f"note: {len(no_pred)} ground-truth case(s) have no prediction and are left out: "
              f"{_listing(no_pred)}", file=sys.stderr)
    if no_truth:
        print(f"note: {len(no_truth)} prediction(s) have no ground truth and are left out: "
              f"{_listing(no_truth)}", file=sys.stderr)

    rows, annotated, unpredicted = _evaluate_pairs(pairs, labels, requested, args.tolerance_mm)
    _explain_targets(requested, annotated, unpredicted, len(pairs))
    if not rows:
        raise HermesError("no target is both predicted and annotated; check the files or pass --targets")

    out = evaluation.write_metrics_csv(args.out, rows)
    _print_table(evaluation.summarize(rows))
    _flag_unusual_references(evaluation.unusual_references(rows))
    print(f"wrote {out} ({len(rows)} rows, {len(pairs)} case(s))")
    return 0


def _check_out(out: Path) -> None:
    """Before any work: ``--out`` names a new or earlier metrics table, never a folder or an input (images and
    JSON label tables never end in .csv)."""
    if out.is_dir():
        raise HermesError(f"--out {out} is a folder; give the CSV file to write, e.g. {out / 'metrics.csv'}")
    if out.suffix.lower() != ".csv":
        raise HermesError(f"--out {out} must end in .csv (the metrics table is written there; an input is never "
                          "written over)")
    if not out.parent.is_dir():
        raise HermesError(f"--out {out}: the folder {out.parent} does not exist; create it or choose another --out")


def _evaluate_pairs(pairs: list, labels: dict | None, requested: list | None,
                    tolerance_mm: float) -> tuple[list, dict, dict]:
    """(metric rows, {truth target: cases annotating it}, {target: cases whose prediction lacks it})."""
    from tqdm import tqdm

    from .. import evaluation

    rows: list = []
    annotated: dict = {}
    unpredicted: dict = {}
    for case, pred_file, truth_file in tqdm(pairs, desc="evaluate", unit="case", disable=len(pairs) < 2,
                                            file=sys.stderr):
        truth = evaluation.load_masks(truth_file, labels)
        pred = evaluation.load_masks(pred_file, labels)
        for key in truth.targets:
            annotated.setdefault(key, []).append(case)
            if key not in pred.targets and (requested is None or key in requested):
                unpredicted.setdefault(key, []).append(case)
        targets = requested if requested is not None else [key for key in truth.targets if key in pred.targets]
        rows += evaluation.evaluate_case(case, pred, truth, targets, tolerance_mm)
    return rows, annotated, unpredicted


def _explain_targets(requested: list | None, annotated: dict, unpredicted: dict, cases: int) -> None:
    """Notes on stderr for targets left out or counted as empty; an unknown requested target is an error."""
    from ..vocabulary import suggest

    for key in requested or ():
        if key not in annotated:
            raise HermesError(f"target {key!r} is not annotated in the ground truth; did you mean: "
                              f"{', '.join(suggest(key, list(annotated)))}?")
        if len(annotated[key]) < cases:
            print(f"note: {key} is not annotated in {cases - len(annotated[key])} of {cases} "
                  "ground-truth case(s); those are not evaluated", file=sys.stderr)
    for key, missing in unpredicted.items():
        what = "counted as empty predictions" if requested else "not evaluated (pass --targets to count them)"
        print(f"note: {key} is annotated but not predicted in {len(missing)} case(s), {what}: "
              f"{_listing(missing)}", file=sys.stderr)


def _flag_unusual_references(flagged: list) -> None:
    """A note on stderr naming the reference contours far from their target's median volume."""
    from ..evaluation.metrics import UNUSUAL_VOLUME_FACTOR

    if not flagged:
        return
    described = [f"{f['case']} {f['target']} {f['truth_ml']:.1f} ml ({f['ratio']:.2g}x the median "
                 f"{f['median_ml']:.1f} ml)" for f in flagged]
    print(f"note: {len(flagged)} reference contour(s) are at least {UNUSUAL_VOLUME_FACTOR:g}x larger or smaller "
          f"than their target's median volume; check that each is the organ, contoured whole (they are "
          f"counted in the means): {_listing(described)}", file=sys.stderr)


def _listing(names: list, limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def _print_table(summary: list) -> None:
    """Per-target means; values left out of a mean (infinite HD95) are counted in a footnote."""
    def cell(value: float, digits: int) -> str:
        return "-" if math.isnan(value) else f"{value:.{digits}f}"

    width = max([len("target")] + [len(s["target"]) for s in summary])
    print(f"{'target':<{width}}  {'cases':>5}  {'dice':>6}  {'hd95_mm':>8}  {'surface_dice':>12}")
    for s in summary:
        star = "*" if s["hd95_mm_left_out"] else " "
        print(f"{s['target']:<{width}}  {s['cases']:>5}  {cell(s['dice'], 4):>6}  "
              f"{cell(s['hd95_mm'], 2):>7}{star}  {cell(s['surface_dice'], 4):>12}")
    left_out = sum(s["hd95_mm_left_out"] for s in summary)
    if left_out:
        print(f"* mean over finite values; {left_out} HD95 value(s) are infinite (one mask empty, "
              "the other not) and left out; they are in the CSV")
