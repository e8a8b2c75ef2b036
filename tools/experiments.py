"""The measurements behind docs/experiments.md (synthetic phantoms, CPU, small scale).

    # universal model vs per-dataset models of the same size and the same total number of steps
    python tools/experiments.py compare --config tools/demo_1.3_training.yaml \
        --data-root PHANTOMS --out DIR --steps 360 --datasets PhantomCT_Abdomen PhantomMR_T1 PhantomMR_T2

    # query-subset stability and the effect of the modality priors, on a trained package's held-out cases
    python tools/experiments.py probe --model MODEL.safetensors --config CONFIG.yaml --data-root PHANTOMS \
        --cache RUN/cache --out probe.json

    # paired organs with and without the side constraint, through the whole pipeline
    python tools/experiments.py sides --model MODEL.safetensors --config CONFIG.yaml --data-root PHANTOMS \
        --out sides.json

    # the resolution ceiling: clinical contours to model space and back, no network involved
    python tools/experiments.py resolution --data DATASET_FOLDER --split train-pats --cases 40 \
        --spacings 4,4,4 3,3,3 2.5,3,3 --out resolution.json

    # partial scans: a 30-slice slab through each offered target vs the whole phantom
    python tools/experiments.py slab --model MODEL.safetensors --cases 3 --out slab.json

    # transfer to the second, independent phantom family
    hermes-segment phantoms --family metaball --out METABALL --cases-per-dataset 16
    python tools/set_offered_targets.py MODEL.safetensors --config METABALL/metaball_config.yaml \
        --test-data METABALL --measure-only --report metaball.json

Each prints a JSON summary and writes it to --out. Held-out cases are the trainer's validation
split (same seed, same fraction); compare and probe score them in model space as the trainer
does, sides on the input grid as a user gets them.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HermesSegment"))

from HermesSegmentLib import models, vocabulary
from HermesSegmentLib.evaluation import dice
from HermesSegmentLib.evaluation.partial_scans import SLAB_SEED, SLAB_SLICES, SLAB_SPACING_MM, phantom_slab_consistency
from HermesSegmentLib.inference import predict_volume
from HermesSegmentLib.network import HermesPredictor
from HermesSegmentLib.training.config import load_config
from HermesSegmentLib.training.datasets import load_cases, target_masks
from HermesSegmentLib.training.incremental import plan_tasks

REPO = Path(__file__).resolve().parents[1]
# A plausible wrong modality for each: what a user picking the wrong item in the list would do.
WRONG_MODALITY = {"CT": "PET", "PET": "CT", "MR-T1": "MR-T2", "MR-T2": "MR-T1"}


def _train(raw: dict, name: str, out: Path, steps: int, data_root: str) -> dict:
    """Train one model with ``hermes-segment train`` (a subprocess, one thread) -> its validation.json."""
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "train.yaml"
    config.write_text(yaml.safe_dump({**raw, "name": name}, sort_keys=False), encoding="utf-8")
    command = [sys.executable, "-m", "HermesSegmentLib.cli", "train", str(config), "--data-root", data_root,
               "--out", str(folder / "run"), "--steps", str(steps), "--device", "cpu"]
    started = time.time()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1",
                                             "PYTHONPATH": str(REPO / "HermesSegment")})
    result = json.loads((folder / "run" / "validation.json").read_text())
    result["seconds"] = round(time.time() - started, 1)
    result["steps"] = steps
    return result


def compare(args: argparse.Namespace) -> dict:
    """Universal (all listed datasets, ``steps``) vs one model per dataset (``steps / n`` each)."""
    raw = yaml.safe_load(Path(args.config).read_text())
    chosen = [d for d in raw["datasets"] if d["name"] in args.datasets]
    raw.update(offer_min_dice=None, demo=False, cache_dir=str(Path(args.cache).resolve()))
    out = Path(args.out)
    per = args.steps // len(chosen)
    results = {"universal": _train({**raw, "datasets": chosen}, "universal", out, args.steps, args.data_root)}
    for spec in chosen:
        results[spec["name"]] = _train({**raw, "datasets": [spec]}, "single-" + spec["name"].lower(), out, per,
                                       args.data_root)
    rows = []
    for spec in chosen:
        universal = results["universal"]["validation_dice_by_dataset"][spec["name"]]
        single = results[spec["name"]]["validation_dice_by_dataset"][spec["name"]]
        for target in single:
            rows.append({"dataset": spec["name"], "target": target, "universal": universal[target],
                         "per_dataset": single[target]})
    return {"steps_universal": args.steps, "steps_per_dataset": per, "rows": rows,
            "mean_universal": round(float(np.mean([r["universal"] for r in rows])), 4),
            "mean_per_dataset": round(float(np.mean([r["per_dataset"] for r in rows])), 4),
            "seconds": {k: v["seconds"] for k, v in results.items()}}


def _scores(network, case, spec, tasks, targets, slot, window, overlap) -> dict[str, float]:
    predictor = HermesPredictor(network, [tasks[t] for t in targets], slot, precision="float32")
    probabilities = predict_volume(predictor, np.array(case.image, np.float32), window_zyx=window, overlap=overlap)
    truth = target_masks(np.asarray(case.label), spec, targets).astype(bool)
    return {t: dice(probabilities[i] >= 128, truth[i]) for i, t in enumerate(targets)}


def probe(args: argparse.Namespace) -> dict:
    """Per (modality, target): Dice asked with all targets, asked alone, with the wrong modality
    slot, and with every modality token zeroed."""
    loaded = models.load(args.model)
    manifest = loaded.manifest
    config = load_config(args.config, data_root=args.data_root)
    config = dataclasses.replace(config, cache_dir=Path(args.cache).resolve(),
                                 spacing=tuple(manifest["input"]["spacing_zyx_mm"]),
                                 window=tuple(manifest["input"]["window_size_zyx"]))
    plan = plan_tasks(config, manifest)
    blind = copy.deepcopy(loaded.network)
    with torch.no_grad():
        for name, parameter in blind.named_parameters():
            if name.endswith("modality_prior"):
                parameter.zero_()
    cases = load_cases(config, "val")
    if args.max_cases_per_dataset:
        cases = _first_cases_per_dataset(cases, args.max_cases_per_dataset)
    collected: dict[str, dict[str, dict[str, list[float]]]] = {}
    for n, case in enumerate(cases):
        spec = config.datasets[case.dataset_index]
        tasks = plan.per_dataset[case.dataset_index]
        targets = list(spec.targets)
        slot = vocabulary.modality(spec.modality).slot
        wrong = vocabulary.modality(WRONG_MODALITY[spec.modality]).slot
        common = dict(case=case, spec=spec, tasks=tasks, window=config.window, overlap=config.val_overlap)
        runs = {"all": _scores(loaded.network, targets=targets, slot=slot, **common),
                "wrong_modality": _scores(loaded.network, targets=targets, slot=wrong, **common),
                "zeroed_modality_tokens": _scores(blind, targets=targets, slot=slot, **common),
                "alone": {}}
        for target in targets:
            runs["alone"].update(_scores(loaded.network, targets=[target], slot=slot, **common))
        for kind, values in runs.items():
            for target, value in values.items():
                collected.setdefault(spec.modality, {}).setdefault(target, {}).setdefault(kind, []).append(value)
        print(f"[{n + 1}/{len(cases)}] {spec.name} {case.files.case}", flush=True)
    return {"model": str(args.model), "cases": len(cases), "per_modality_target": _probe_table(collected)}


def _first_cases_per_dataset(cases: list, limit: int) -> list:
    counts: Counter[int] = Counter()
    kept = []
    for case in cases:
        if counts[case.dataset_index] < limit:
            kept.append(case)
            counts[case.dataset_index] += 1
    return kept


def _probe_table(collected: dict[str, dict[str, dict[str, list[float]]]]) -> dict:
    """Per modality and target: the mean Dice of each kind of query, and how far asking alone moves it."""
    table: dict[str, dict[str, dict]] = {}
    for modality, targets in collected.items():
        for target, kinds in targets.items():
            means = {k: round(float(np.mean(v)), 4) for k, v in kinds.items()}
            means["abs_alone_minus_all"] = round(abs(means["alone"] - means["all"]), 4)
            means["max_case_abs_alone_minus_all"] = round(
                float(np.max(np.abs(np.subtract(kinds["alone"], kinds["all"])))), 4)
            means["cases"] = len(kinds["all"])
            table.setdefault(modality, {})[target] = means
    return table


def sides(args: argparse.Namespace) -> dict:
    """Dice of each paired (left/right) target on the held-out cases, on the input grid, with
    and without the side constraint (postprocess.keep_to_side)."""
    import SimpleITK as sitk

    from HermesSegmentLib.pipeline import segment_image
    from HermesSegmentLib.postprocess import PostprocessOptions
    from HermesSegmentLib.training.datasets import find_cases, split_cases

    loaded = models.load(args.model)
    config = load_config(args.config, data_root=args.data_root)
    rows: list[dict[str, Any]] = []  # the JSON summary's rows
    for spec in config.datasets:
        paired = [t for t in spec.targets if vocabulary.target(t).side and t in loaded.targets_for(spec.modality)]
        if not paired:
            continue
        for case in split_cases(find_cases(spec), config.val_fraction, config.seed)[1]:
            image = sitk.ReadImage(str(case.image))
            truth = target_masks(sitk.GetArrayFromImage(sitk.ReadImage(str(case.label))), spec, paired).astype(bool)
            runs = {}
            for name, constrained in (("with", True), ("without", False)):
                result = segment_image(image, modality=spec.modality, targets=paired, model=loaded, device="cpu",
                                       precision="float32", postprocess=PostprocessOptions(side_constraint=constrained))
                runs[name] = [dice(mask.full(truth.shape[1:]), truth[i]) for i, mask in enumerate(result.masks)]
            for i, target in enumerate(paired):
                rows.append({"dataset": spec.name, "case": case.case, "target": target,
                             "without": round(runs["without"][i], 4), "with": round(runs["with"][i], 4)})
            print(f"{spec.name} {case.case}: " + ", ".join(f"{r['target']} {r['without']:.3f} -> {r['with']:.3f}"
                                                          for r in rows[-len(paired):]), flush=True)
    means: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        means.setdefault(f"{row['dataset']}/{row['target']}", []).append((row["without"], row["with"]))
    return {"model": str(args.model), "rows": rows,
            "mean": {k: {"without": round(float(np.mean([a for a, _ in v])), 4),
                         "with": round(float(np.mean([b for _, b in v])), 4)} for k, v in means.items()}}


def parse_spacing_zyx(text: str) -> tuple[float, float, float]:
    """``"z,y,x"`` (mm, three positive numbers) as a tuple; argparse shows the error in one line."""
    try:
        z, y, x = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not z,y,x: give three numbers in mm, e.g. 2.5,3,3") from None
    if min(z, y, x) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: spacings are positive numbers of mm, e.g. 2.5,3,3")
    return z, y, x


def resolution(args: argparse.Namespace) -> dict:
    """The best Dice a model working at a given spacing can reach on the input grid.

    Each clinical contour is taken to model space as the engine takes an image (the model grid of
    ``to_model_space``, linear interpolation) -- the binary mask read as a probability, i.e. a
    perfect network's output at that resolution -- and back with the engine's own
    ``probabilities_to_mask`` (linear, threshold 0.5). Dice against the original contour. Cases:
    the first ``--cases`` of ``--split`` in the dataset's cases.json, organs as annotated there.
    """
    import SimpleITK as sitk

    from HermesSegmentLib.postprocess.to_input_grid import probabilities_to_mask, reference_geometry
    from HermesSegmentLib.preprocess.model_space import ModelSpaceImage, _model_grid

    folder = Path(args.data)
    names = {v: k for k, v in json.loads((folder / "dataset.json").read_text())["labels"].items() if v}
    annotated = json.loads((folder / "cases.json").read_text())
    chosen = sorted((c for c, e in annotated.items() if e.get("split") == args.split),
                    key=lambda c: int(c.rsplit("_", 1)[1]) if c.rsplit("_", 1)[1].isdigit() else c)[:args.cases]
    scores: dict[str, dict[str, list[float]]] = {}
    for case in chosen:
        label = sitk.ReadImage(str(folder / "labelsTr" / f"{case}.nii.gz"))
        values = sitk.GetArrayFromImage(label)
        reference = reference_geometry(label)
        for spacing_zyx in args.spacings:
            size_xyz, origin_xyz = _model_grid(label, np.asarray(spacing_zyx)[::-1])
            for value, name in names.items():
                if name not in annotated[case]["annotated"]:
                    continue
                truth = values == value
                mask = sitk.GetImageFromArray(truth.astype(np.float32))
                mask.CopyInformation(label)
                probability = sitk.GetArrayFromImage(sitk.Resample(
                    mask, [int(n) for n in size_xyz], sitk.Transform(), sitk.sitkLinear, tuple(origin_xyz),
                    tuple(np.asarray(spacing_zyx)[::-1]), (1, 0, 0, 0, 1, 0, 0, 0, 1), 0.0, sitk.sitkFloat32))
                nz, ny, nx = (int(n) for n in probability.shape)
                ox, oy, oz = (float(v) for v in origin_xyz)
                model = ModelSpaceImage(
                    array=probability, crop_offset_zyx=(0, 0, 0), grid_size_zyx=(nz, ny, nx), origin_xyz=(ox, oy, oz),
                    spacing_zyx=spacing_zyx, direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
                    body_box=((0, nz), (0, ny), (0, nx)))
                back = _full(probabilities_to_mask(probability, model, reference), truth.shape)
                key = "x".join(f"{v:g}" for v in spacing_zyx)
                scores.setdefault(key, {}).setdefault(name, []).append(dice(back, truth))
        print(case, {k: {n: round(v[-1], 3) for n, v in s.items()} for k, s in scores.items()}, flush=True)
    return {"cases": chosen, "split": args.split,
            "mean_dice": {k: {n: round(float(np.mean(v)), 4) for n, v in s.items()} for k, s in scores.items()},
            "min_dice": {k: {n: round(float(np.min(v)), 4) for n, v in s.items()} for k, s in scores.items()}}


def slab(args: argparse.Namespace) -> dict:
    """Slab consistency (``evaluation.partial_scans``) on standard phantoms at 3 mm slices (a
    30-slice slab = 90 mm, the slab of the issue's real CT), every offered target of every
    modality, ``--cases`` seeds each."""
    loaded = models.load(args.model)
    rows: dict[str, dict[str, list[float]]] = {}
    for modality in ("CT", "MR-T1", "MR-T2", "PET"):
        if modality not in loaded.manifest["defaults"]:
            continue
        scores = phantom_slab_consistency(loaded, modality, loaded.targets_for(modality),
                                          range(args.seed, args.seed + args.cases))
        if scores:
            rows[modality] = scores
        print(f"{modality}: " + ", ".join(f"{t} {v}" for t, v in scores.items()), flush=True)

    def summary(reduce) -> dict:
        return {m: {t: round(float(reduce(v)), 4) for t, v in ts.items()} for m, ts in rows.items()}

    return {"model": str(args.model), "slices": SLAB_SLICES, "spacing_mm": SLAB_SPACING_MM,
            "cases_per_modality": args.cases, "dice_slab_vs_whole": summary(np.mean), "min": summary(np.min)}


def _full(crop, shape) -> np.ndarray:
    """A bounding-box mask crop as a full boolean array of ``shape``."""
    out = np.zeros(shape, bool)
    if crop.array.size:
        box = tuple(slice(o, o + n) for o, n in zip(crop.offset_zyx, crop.array.shape))
        out[box] = crop.array
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--config", required=True)
    c.add_argument("--data-root", required=True)
    c.add_argument("--cache", required=True, help="preprocessing cache to share (e.g. the demo run's)")
    c.add_argument("--out", required=True)
    c.add_argument("--steps", type=int, default=360)
    c.add_argument("--datasets", nargs="+", required=True)
    p = sub.add_parser("probe")
    p.add_argument("--model", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--data-root", required=True)
    p.add_argument("--cache", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--max-cases-per-dataset", type=int, default=0)
    d = sub.add_parser("sides")
    d.add_argument("--model", required=True)
    d.add_argument("--config", required=True)
    d.add_argument("--data-root", required=True)
    d.add_argument("--out", required=True)
    r = sub.add_parser("resolution")
    r.add_argument("--data", required=True, help="an nnU-Net dataset folder with dataset.json and cases.json")
    r.add_argument("--split", default="train-pats")
    r.add_argument("--cases", type=int, default=40)
    r.add_argument("--spacings", nargs="+", type=parse_spacing_zyx,
                   default=[(4.0, 4.0, 4.0), (3.0, 3.0, 3.0), (2.5, 3.0, 3.0)], help="z,y,x in mm")
    r.add_argument("--out", required=True)
    b = sub.add_parser("slab")
    b.add_argument("--model", required=True)
    b.add_argument("--cases", type=int, default=3)
    b.add_argument("--seed", type=int, default=SLAB_SEED, help="first phantom seed (never a training seed)")
    b.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"compare": compare, "probe": probe, "sides": sides, "resolution": resolution,
              "slab": slab}[args.command](args)
    text = json.dumps({"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **result}, indent=2)
    Path(args.out if args.command != "compare" else Path(args.out) / "compare.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
