"""Measure a trained package on test cases it never saw, as a user gets its results, record the
Dice in its manifest, and offer the (modality, target) pairs that reach a bar.

    python tools/set_offered_targets.py PACKAGE.safetensors --config CONFIG.yaml --test-data DIR \
        --min-dice 0.85 [--slab-cases 2] [--version V] [--out OUT.safetensors] [--report REPORT.json]
    python tools/set_offered_targets.py PACKAGE.safetensors --measured PHANTOMS.json REAL.json ...
    python tools/set_offered_targets.py PACKAGE.safetensors --config CONFIG.yaml --test-data DIR \
        --dataset NAME --split SPLIT --measure-only --report REAL.json      # one dataset of the config

``DIR`` holds the config's datasets under the same folder names (nnU-Net layout), for instance
phantoms generated with another seed than the training data
(``hermes-segment phantoms --out DIR --cases-per-dataset 8 --seed 1000``); every case in it is a
test case -- except in a dataset with a ``cases.json``, where ``--split NAME`` picks the test
cases (e.g. OpenKBP's ``validation-pats``, which the training config's ``splits`` leave out), and
only the structures a case annotates are scored there. Each case is segmented with
``segment_image`` for every (modality, target) pair the package was trained on, offered or not:
float32, the default post-processing (side constraint, organs in one piece), masks on the input
grid. Dice against the truth there, mean over the cases per pair. The raw network's Dice (no
post-processing) is measured too and recorded beside it.

With ``--slab-cases N``, the pairs that reach the bar are also checked on partial scans
(``evaluation.partial_scans``: a 30-slice slab of a standard phantom, seeds 5000 on, against the
whole phantom inside the slab): a pair is offered only if every one of the N phantoms gives at
least ``--min-slab-dice`` (0.9). Targets that no phantom holds (the head-and-neck organs) cannot
be checked this way and are offered on their Dice alone.

The package's ``provenance.metrics`` gets ``test_dice`` (what decides), ``test_dice_raw``,
``test_cases`` and ``offer_min_dice`` (and ``slab_dice_min``, ``slab_cases``,
``offer_min_slab_dice``); its ``defaults`` become the pairs whose ``test_dice`` is at least
``--min-dice`` (and whose slabs hold). The trainer's ``validation_dice`` (model space, the training data's
held-out split) stays as it was. Weights are copied unchanged.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HermesSegment"))

from HermesSegmentLib import models
from HermesSegmentLib.atomic import write_text
from HermesSegmentLib.errors import HermesError
from HermesSegmentLib.evaluation import dice, unusual_references
from HermesSegmentLib.models import LoadedModel, save, weights_dtype
from HermesSegmentLib.postprocess import PostprocessOptions
from HermesSegmentLib.training.config import DatasetSpec, load_config
from HermesSegmentLib.training.datasets import CASES_FILE, find_cases, target_masks

RAW = PostprocessOptions(side_constraint=False, single_piece=False)


def trained_pairs(manifest: dict) -> dict[str, dict[str, int]]:
    """{modality: {target: task index}} of every pair the package was trained on (the first task
    that serves it), whether offered or not; with the manifest's ``queries``, only the tasks of the
    modality's query (the engine asks nothing else)."""
    queries = manifest.get("queries", {})
    pairs: dict[str, dict[str, int]] = {}
    for task in sorted(manifest["tasks"], key=lambda t: t["index"]):
        for modality in task["modalities"]:
            if modality not in queries or task["index"] in queries[modality]:
                pairs.setdefault(modality, {}).setdefault(task["target"], task["index"])
    return pairs


def offering_every_trained_pair(loaded: LoadedModel) -> LoadedModel:
    """``loaded`` with every pair it was trained on offered, so that each can be measured."""
    return LoadedModel(network=loaded.network, manifest={**loaded.manifest, "defaults": trained_pairs(loaded.manifest)},
                       path=loaded.path)


def measure(loaded: LoadedModel, config_path: Path, test_data: Path, split: str | None = None,
            progress=print, raw: bool = True, only: tuple[str, ...] = ()) -> dict:
    """Mean Dice per (modality, target) on every test case of ``test_data`` (``split``: the cases of
    that split in datasets with a cases.json), with the default post-processing (``test_dice``)
    and without (``test_dice_raw``); ``volume_ratio``: the median over the cases of the
    post-processed mask's volume / the reference's (above 1: the masks are too large; an empty
    reference is left out); ``per_case`` keeps every score and ratio; ``unusual_references`` names
    the reference contours far from their target's median volume (counted in the means all the same).
    ``only``: measure these datasets of the config (by name) and no other; ``test_data`` need
    not hold the rest."""
    import SimpleITK as sitk

    pairs = trained_pairs(loaded.manifest)
    everything = offering_every_trained_pair(loaded)
    specs = datasets_to_measure(config_path, test_data, only)
    runs = [("test_dice", PostprocessOptions())] + ([("test_dice_raw", RAW)] if raw else [])
    scores: dict[str, dict[str, dict[str, list[float]]]] = {metric: {} for metric, _ in runs}
    ratios: dict[str, dict[str, list[float]]] = {}
    cases: dict[str, int] = {}
    per_case: dict[str, dict[str, dict[str, float]]] = {}
    volumes: list[dict] = []  # per (case, target) of a dataset: the reference's volume
    for spec in specs:
        if (spec.path / CASES_FILE).is_file():
            if split is None:
                raise HermesError(f"dataset '{spec.name}' has a {CASES_FILE}: "
                                  "say which split is the test set (--split)")
            spec = dataclasses.replace(spec, splits=(split,))
        targets = [t for t in spec.targets if t in pairs.get(spec.modality, {})]
        if not targets:
            continue
        for case in find_cases(spec):
            asked = [t for t in targets if t in case.annotated]
            if not asked:
                continue
            image = sitk.ReadImage(str(case.image))
            truth = target_masks(sitk.GetArrayFromImage(sitk.ReadImage(str(case.label))), spec, asked).astype(bool)
            voxel_ml = float(np.prod(image.GetSpacing())) / 1000
            volumes += [{"case": f"{spec.name}/{case.case}", "target": f"{spec.name}/{t}",
                         "truth_ml": float(truth[i].sum()) * voxel_ml} for i, t in enumerate(asked)]
            dice_by_metric, volume_ratios = score_case(everything, image, truth, spec.modality, asked, runs)
            case_scores = per_case.setdefault(f"{spec.name}/{case.case}", {})
            for metric, by_target in dice_by_metric.items():
                case_scores[metric] = {t: round(v, 4) for t, v in by_target.items()}
                _collect(scores[metric].setdefault(spec.modality, {}), by_target)
            case_scores["volume_ratio"] = {t: round(v, 3) for t, v in volume_ratios.items()}
            _collect(ratios.setdefault(spec.modality, {}), volume_ratios)
            cases[spec.name] = cases.get(spec.name, 0) + 1
            progress(f"{spec.name} {case.case}: " + ", ".join(f"{t} {d:.3f}" for t, d in
                                                             per_case[f"{spec.name}/{case.case}"]["test_dice"].items()))
    means = {metric: {m: {t: round(float(np.mean(v)), 4) for t, v in ts.items()} for m, ts in by_modality.items()}
             for metric, by_modality in scores.items()}
    unusual = [{**u, "target": u["target"].split("/", 1)[1]} for u in unusual_references(volumes)]
    for u in unusual:
        progress(f"check the reference: {u['case']} {u['target']} {u['truth_ml']:.1f} ml, {u['ratio']:.2g}x "
                 f"the median {u['median_ml']:.1f} ml")
    means["volume_ratio"] = {m: {t: round(float(np.median(v)), 3) for t, v in ts.items()} for m, ts in ratios.items()}
    return {**means, "test_cases": cases, "per_case": per_case, "unusual_references": unusual}


def _collect(into: dict[str, list[float]], values: dict[str, float]) -> None:
    """Append each target's value of one case to its list."""
    for target, value in values.items():
        into.setdefault(target, []).append(value)


def datasets_to_measure(config_path: Path, test_data: Path, only: tuple[str, ...] = ()) -> tuple[DatasetSpec, ...]:
    """The config's datasets under ``test_data``; with ``only``, those named (an unknown name or a
    missing folder is a :class:`HermesError`)."""
    config = load_config(config_path, data_root=test_data, check_paths=not only)
    if not only:
        return config.datasets
    names = [spec.name for spec in config.datasets]
    unknown = [name for name in only if name not in names]
    if unknown:
        raise HermesError(f"{config_path.name} has no dataset '{unknown[0]}'; its datasets: {', '.join(names)}")
    specs = tuple(spec for spec in config.datasets if spec.name in only)
    missing = [spec for spec in specs if not spec.path.is_dir()]
    if missing:
        raise HermesError(f"dataset '{missing[0].name}': folder not found: {missing[0].path}")
    return specs


def score_case(model: LoadedModel, image, truth: np.ndarray, modality: str, targets: list[str],
               runs: list[tuple[str, PostprocessOptions]]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """One case through ``segment_image`` once per (metric, post-processing) of ``runs``: ({metric:
    {target: Dice}}, {target: mask volume / reference volume} of the first run, targets whose
    reference is empty left out). truth: bool (targets, z, y, x) on the image's grid."""
    from HermesSegmentLib.pipeline import segment_image

    dice_by_metric: dict[str, dict[str, float]] = {}
    volume_ratios: dict[str, float] = {}
    for metric, options in runs:
        result = segment_image(image, modality=modality, targets=targets, model=model, device="cpu",
                               precision="float32", postprocess=options)
        dice_by_metric[metric] = {t: dice(mask.full(truth.shape[1:]), truth[i]) for i, (t, mask) in
                                  enumerate(zip(targets, result.masks))}
        if not volume_ratios:
            volume_ratios = {t: mask.voxels / float(truth[i].sum()) for i, (t, mask) in
                             enumerate(zip(targets, result.masks)) if truth[i].any()}
    return dice_by_metric, volume_ratios


def merge_reports(reports: list[dict]) -> dict:
    """One measurement from several :func:`measure` reports of disjoint test sets (a (modality,
    target) pair measured in two of them is a :class:`HermesError`: which one should decide?)."""
    merged: dict = {"test_dice": {}, "test_cases": {}, "per_case": {}, "unusual_references": []}
    for report in reports:
        for metric in ("test_dice", "test_dice_raw", "volume_ratio"):
            for modality, scores in report.get(metric, {}).items():
                into = merged.setdefault(metric, {}).setdefault(modality, {})
                for target, value in scores.items():
                    if target in into:
                        raise HermesError(f"{modality} {target} is measured in two reports; give each pair once")
                    into[target] = value
        merged["test_cases"].update(report.get("test_cases", {}))
        merged["per_case"].update(report.get("per_case", {}))
        merged["unusual_references"] += report.get("unusual_references", [])
    return merged


def measure_slabs(loaded: LoadedModel, measured: dict, min_dice: float, cases: int, progress=print) -> dict:
    """{modality: {target: minimum slab-vs-whole Dice over ``cases`` standard phantoms}} for the
    pairs whose ``test_dice`` reaches ``min_dice`` and that the phantoms hold."""
    from HermesSegmentLib.evaluation.partial_scans import SLAB_SEED, phantom_slab_consistency

    everything = offering_every_trained_pair(loaded)
    minima: dict[str, dict[str, float]] = {}
    for modality, scores in measured["test_dice"].items():
        candidates = [t for t, d in scores.items() if d >= min_dice]
        if not candidates:
            continue
        found = phantom_slab_consistency(everything, modality, candidates, range(SLAB_SEED, SLAB_SEED + cases))
        minima[modality] = {t: min(v) for t, v in found.items()}
        progress(f"slabs {modality}: " + ", ".join(f"{t} {v}" for t, v in found.items()))
    return minima


def offer(manifest: dict, measured: dict, min_dice: float, test_data: str, slabs: dict | None = None,
          min_slab_dice: float = 0.9) -> dict:
    """A copy of ``manifest`` whose defaults are the pairs with ``test_dice >= min_dice`` (and, for
    the pairs in ``slabs`` (:func:`measure_slabs`), a slab Dice of at least ``min_slab_dice``)."""
    out = copy.deepcopy(manifest)
    pairs = trained_pairs(manifest)
    slabs = slabs or {}

    def holds(modality: str, target: str) -> bool:
        return slabs.get(modality, {}).get(target, 1.0) >= min_slab_dice

    out["defaults"] = {modality: {t: pairs[modality][t] for t, d in scores.items()
                                  if d >= min_dice and holds(modality, t)}
                       for modality, scores in measured["test_dice"].items()}
    out["defaults"] = {m: d for m, d in out["defaults"].items() if d}
    if not out["defaults"]:
        raise HermesError(f"no (modality, target) pair reaches Dice {min_dice} on {test_data}; lower --min-dice")
    evaluation = ("Dice on the input grid of test cases never trained on, through segment_image (float32) with "
                  "the default post-processing (test_dice) and without it (test_dice_raw), mean over the cases")
    summary = {k: v for k, v in measured.items() if k != "per_case"}
    out["provenance"].setdefault("metrics", {}).update(summary, offer_min_dice=min_dice, test_data=test_data,
                                                       test_evaluation=evaluation)
    if slabs:
        out["provenance"]["metrics"].update(slab_dice_min=slabs, offer_min_slab_dice=min_slab_dice)
    return out


def print_scores(measured: dict, min_dice: float | None = None) -> None:
    """One line per modality: each pair's Dice (raw Dice in brackets; ``*``: at the bar)."""
    for modality, scores in measured["test_dice"].items():
        raw = measured.get("test_dice_raw", {}).get(modality, {})
        print(f"{modality}: " + ", ".join(f"{t} {d:.3f}" + (f" (raw {raw[t]:.3f})" if t in raw else "")
                                          + (" *" if min_dice is not None and d >= min_dice else "")
                                          for t, d in scores.items()))


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--config", type=Path, help="the training config (its datasets' label maps)")
    parser.add_argument("--test-data", type=Path, help="folder holding the config's datasets")
    parser.add_argument("--measured", type=Path, nargs="+", metavar="REPORT",
                        help="offer from these --report files of earlier --measure-only runs (for instance one on "
                             "phantoms and one on real scans, run side by side) instead of measuring")
    parser.add_argument("--min-dice", type=float, default=0.85, help="the bar (default 0.85)")
    parser.add_argument("--version", help="set the manifest's version")
    parser.add_argument("--out", type=Path, help="write here instead of over PACKAGE")
    parser.add_argument("--report", type=Path, help="also write the measured Dice as JSON")
    parser.add_argument("--data-label", help="how the manifest names the test data (default: DIR's path)")
    parser.add_argument("--split", help="in datasets with a cases.json, the split whose cases are the test set")
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME",
                        help="measure only this dataset of the config (repeatable); --test-data need not hold the rest")
    parser.add_argument("--no-raw", action="store_true",
                        help="skip the second run without post-processing (half the time; no test_dice_raw)")
    parser.add_argument("--slab-cases", type=int, default=0,
                        help="check the pairs at the bar on this many 30-slice phantom slabs (0: no check)")
    parser.add_argument("--min-slab-dice", type=float, default=0.9,
                        help="slab vs whole Dice every checked phantom must reach (default 0.9)")
    parser.add_argument("--measure-only", action="store_true",
                        help="only measure (print, and write --report); leave the package as it is")
    args = parser.parse_args(argv)
    if not args.measured and (args.config is None or args.test_data is None):
        parser.error("give --config and --test-data (to measure), or --measured REPORT...")
    return args


def _write_report(path: Path | None, measured: dict) -> None:
    # Whole or absent: tools/measure_demo_candidate.sh resumes on the reports it finds.
    if path:
        write_text(path, json.dumps(measured, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    from safetensors.torch import load_file

    loaded = models.load(args.package)
    if args.measured:
        measured = merge_reports([json.loads(path.read_text(encoding="utf-8")) for path in args.measured])
    else:
        measured = measure(loaded, args.config, args.test_data, args.split, raw=not args.no_raw,
                           only=tuple(args.dataset))
    if args.measure_only:
        _write_report(args.report, measured)
        print_scores(measured)
        return 0
    slabs = measure_slabs(loaded, measured, args.min_dice, args.slab_cases) if args.slab_cases else None
    if slabs:
        measured["slab_dice_min"], measured["slab_cases"] = slabs, args.slab_cases
    label = args.data_label or str(args.test_data or ", ".join(str(path) for path in args.measured))
    manifest = offer(loaded.manifest, measured, args.min_dice, label, slabs, args.min_slab_dice)
    if args.version:
        manifest["version"] = args.version
    out = save(args.out or args.package, load_file(str(args.package)), manifest, dtype=weights_dtype(args.package))
    _write_report(args.report, measured)
    print_scores(measured, args.min_dice)
    for modality, minima in (slabs or {}).items():
        failed = [f"{t} {v:.3f}" for t, v in minima.items() if v < args.min_slab_dice]
        if failed:
            print(f"{modality}: not offered, a slab changes the mask: " + ", ".join(failed))
    print(f"* offered (Dice >= {args.min_dice}" + (f", slabs >= {args.min_slab_dice}" if slabs else "")
          + f"); wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
