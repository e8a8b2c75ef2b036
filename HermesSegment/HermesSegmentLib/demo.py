"""`make demo`: segment a sample with the demo model, show and score the result.

    python -m HermesSegmentLib.demo --out demo-output [--modality CT] [--seed 3] [--model hermes-demo]
    python -m HermesSegmentLib.demo --out demo-output --sample real-hn-ct

The default sample is a generated phantom: writes ``phantom.nii.gz`` (the image),
``phantom_truth.*`` (its generated truth), ``phantom.seg.nrrd`` (open it in Slicer),
``phantom.png`` (three orthogonal slices with the outline of each target) and ``summary.csv``;
prints per-target volumes and Dice against the truth. ``--sample real-hn-ct`` segments the bundled
real head-and-neck CT (an OpenKBP validation patient, ``Resources/SampleData``) for the structures
its clinical contours hold and the model offers, writes ``real-hn-ct.seg.nrrd``,
``real-hn-ct.png`` and ``summary.csv``, and prints Dice against those clinical contours.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from .pipeline.options import DEFAULT_MODEL

#: --sample choices: the generated phantom, or the bundled real patient (samples.json's name).
SAMPLES = {"phantom": "", "real-hn-ct": "HermesHeadNeckCT"}


def to_lps(image, masks: dict) -> tuple[np.ndarray, dict, tuple]:
    """Image and masks permuted/flipped to LPS axes (no resampling), for display in standard
    radiological orientation whatever the storage order: (array, masks, spacing_zyx)."""
    import SimpleITK as sitk

    def orient(array: np.ndarray) -> np.ndarray:
        holder = sitk.GetImageFromArray(array.view(np.uint8) if array.dtype == bool else array)
        holder.CopyInformation(image)
        return sitk.GetArrayFromImage(sitk.DICOMOrient(holder, "LPS"))

    oriented = sitk.DICOMOrient(image, "LPS")
    return (sitk.GetArrayFromImage(oriented), {k: orient(m).astype(bool) for k, m in masks.items()},
            oriented.GetSpacing()[::-1])


def render_overview(image, masks: dict, colors: dict, path: Path, title: str) -> None:
    """Axial, coronal and sagittal slices through the centre of the segmented region, with outlines.

    ``image``: SimpleITK image; ``masks``: {target key: bool array on the image's grid}.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image_array, masks, spacing_zyx = to_lps(image, masks)
    union = np.zeros(image_array.shape, dtype=bool)
    for mask in masks.values():
        union |= mask
    centre = [int(np.mean(np.flatnonzero(union.any(axis=tuple(a for a in range(3) if a != ax)))))
              if union.any() else n // 2 for ax, n in enumerate(image_array.shape)]
    lo, hi = np.percentile(image_array[::4, ::4, ::4], [1, 99])
    views = [("axial", lambda a: a[centre[0]], spacing_zyx[1] / spacing_zyx[2]),
             ("coronal", lambda a: a[:, centre[1], :], spacing_zyx[0] / spacing_zyx[2]),
             ("sagittal", lambda a: a[:, :, centre[2]], spacing_zyx[0] / spacing_zyx[1])]
    figure, axes = plt.subplots(1, 3, figsize=(15, 5.6), facecolor="black")
    for axis, (name, cut, aspect) in zip(axes, views):
        # LPS arrays: rows run anterior->posterior (axial) and inferior->superior (flip to put superior up).
        flip = (lambda a: a) if name == "axial" else np.flipud
        axis.imshow(flip(cut(image_array)), cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
        for key, mask in masks.items():
            section = flip(cut(mask))
            if section.any():
                axis.contour(section.astype(float), levels=[0.5], colors=[np.array(colors[key]) / 255.0],
                             linewidths=1.2)
        axis.set_title(name, color="white")
        axis.axis("off")
    handles = [plt.Line2D([], [], color=tuple(c / 255.0 for c in colors[k]), label=k) for k in masks]
    figure.legend(handles=handles, loc="lower center", ncol=min(len(handles), 7), frameon=False, labelcolor="white")
    figure.suptitle(title, color="white")
    figure.savefig(path, dpi=90, facecolor="black", bbox_inches="tight")
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="HermesSegment demo on a generated phantom")
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    parser.add_argument("--modality", default="CT", help="CT, MR-T1, MR-T2 or PET")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-voxels", type=int, default=3_000_000, help="size cap of the generated phantom")
    # A whole torso holds every CT target the demo model offers. Demo model 1.0 was much worse on
    # it than on an abdomen (mean Dice 0.40 vs 0.58); 1.1, trained with crops that reach into the
    # air around the body, is not (0.52 vs 0.50 on this seed, measured 2026-11-22).
    parser.add_argument("--region", default="torso",
                        help="phantom field of view: torso, abdomen, thorax, abdomen_pelvis")
    parser.add_argument("--sample", choices=tuple(SAMPLES), default="phantom",
                        help="phantom (generated, default) or real-hn-ct (a real head-and-neck CT with its "
                             "clinical contours, bundled)")
    args = parser.parse_args(argv)

    from . import writers
    from .errors import HermesError
    from .evaluation import evaluate_masks
    from .models import load
    from .pipeline import segment_image

    try:
        model = load(args.model)
        print(f"model: {model.manifest['title']}\n       {model.manifest['intended_use']}")
        stem, image, truth, modality, targets = _sample(args, model)
        result = segment_image(image, modality=modality, targets=targets, model=model, device=args.device)
    except HermesError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    segmentation = args.out / f"{stem}.seg.nrrd"
    writers.write_seg_nrrd(segmentation, result.masks, result.reference)

    shape = image.GetSize()[::-1]
    spacing_zyx = image.GetSpacing()[::-1]
    predicted = {m.key: m.full(shape) for m in result.masks}
    truth = {key: truth[key] for key in predicted if key in truth}
    scores = {row["target"]: row for row in evaluate_masks(predicted, truth, spacing_zyx)}

    print(f"\nsegmented {len(result.masks)} targets in {result.seconds['total']:.1f} s on {result.device} "
          f"({result.precision})")
    print(f"{'target':<18} {'volume mL':>10} {'truth mL':>10} {'Dice':>7}")
    rows = []
    for mask in result.masks:
        volume = mask.volume_ml(image.GetSpacing())
        score = scores.get(mask.key)
        print(f"{mask.key:<18} {volume:>10.1f} {score['truth_ml'] if score else float('nan'):>10.1f} "
              f"{score['dice'] if score else float('nan'):>7.3f}")
        rows.append({"case": stem, "target": mask.key, "voxels": mask.voxels, "volume_ml": round(volume, 2),
                     "seconds": round(result.seconds["total"], 2)})
    dices = [s["dice"] for s in scores.values()]
    if dices:
        print(f"{'mean':<18} {'':>10} {'':>10} {np.mean(dices):>7.3f}")
    writers.write_summary_rows(args.out / "summary.csv", stem, rows)
    picture = args.out / f"{stem}.png"
    subject = f"a {modality} phantom" if args.sample == "phantom" else f"a real {modality} (Dice vs clinical contours)"
    render_overview(image, predicted, {m.key: m.color for m in result.masks}, picture,
                    f"{model.name} on {subject} (demo model; not for clinical use)")
    print(f"\nwrote {segmentation} (open in 3D Slicer), {picture}, {args.out / 'summary.csv'}")
    return 0


def _sample(args: argparse.Namespace, model):
    """(stem, image, {target: bool truth}, modality, targets to ask) of the sample ``args`` names:
    a phantom with every target the model offers for its modality, or a bundled real scan with
    the contoured structures the model offers."""
    from . import vocabulary
    from .errors import HermesError

    if args.sample == "phantom":
        modality = vocabulary.modality(args.modality).key
        image, truth, what = _phantom(args, modality)
        targets = model.targets_for(modality)
    else:
        image, truth, modality, what = _real_sample(SAMPLES[args.sample])
        offered = model.targets_for(modality)
        targets = [key for key in truth if key in offered]
        skipped = [key for key in truth if key not in offered]
        if skipped:
            print(f"not offered by {model.name} (not trained, or measured below its bar): {', '.join(skipped)}")
        if not targets:
            raise HermesError(f"{model.name} offers none of the structures contoured in this sample "
                              f"({', '.join(truth)}); use a model that does")
    stem = "phantom" if args.sample == "phantom" else args.sample
    print(f"{stem}: {what}")
    return stem, image, truth, modality, targets


def _phantom(args: argparse.Namespace, modality: str):
    """(image, {target: bool truth}, description) of a generated phantom, written to ``args.out``."""
    import SimpleITK as sitk

    from .phantoms import target_masks, write_single_case

    image_path, truth_path, info_path = write_single_case(args.out, "phantom", modality, seed=args.seed,
                                                             max_voxels=args.max_voxels, region=args.region)
    info = json.loads(info_path.read_text())
    truth = target_masks(sitk.GetArrayFromImage(sitk.ReadImage(str(truth_path))), info["labels"])
    return sitk.ReadImage(str(image_path)), truth, f"{image_path} ({modality}, {args.region}, seed {args.seed})"


def _real_sample(name: str):
    """(image, {target: bool clinical contour}, modality, description) of a bundled real sample."""
    import SimpleITK as sitk

    from .bundled_samples import bundled_sample
    from .writers import read_seg_nrrd

    sample = bundled_sample(name)
    image = sitk.ReadImage(str(sample.image))
    contours, _ = read_seg_nrrd(sample.contours)
    truth = {mask.key: mask.full(image.GetSize()[::-1]) for mask in contours}
    print(f"sample: {sample.title}\n        {sample.attribution}")
    return image, truth, sample.modality, f"{sample.image.name} (real patient, {sample.modality})"

if __name__ == "__main__":
    sys.exit(main())
