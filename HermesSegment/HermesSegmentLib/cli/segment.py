"""`hermes-segment segment`: segment files, folders, globs and DICOM series folders in one batch.

One bad case is reported and the batch goes on; the exit status is 1 when some cases failed.
Cases whose output already exists are skipped unless ``--overwrite``. Every file is written
atomically, so an interrupted run leaves no partial output.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import sys
import time
from pathlib import Path

from ..errors import CancelledError, HermesError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
OUTPUT_SUFFIX = {"seg-nrrd": ".seg.nrrd", "nifti": ".nii.gz"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("segment", help="segment images (files, folders, globs, DICOM series folders)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, globs or DICOM series folders")
    parser.add_argument("--modality", required=True, help="CT, PET, MR-T1, MR-T2, cine-MR or MR")
    parser.add_argument("--targets", default="all", help="comma-separated targets, or 'all' (default)")
    parser.add_argument("--model", default="hermes-demo", help="model name or .safetensors file (default: hermes-demo)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--format", choices=sorted(OUTPUT_SUFFIX), default="seg-nrrd",
                        help="seg-nrrd (Slicer, overlapping targets kept) or nifti (label map + JSON sidecar)")
    parser.add_argument("--overlap-policy", choices=("priority", "per_target"), default="priority",
                        help="nifti only: one label map where later targets win, or one file per target")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (default: auto)")
    parser.add_argument("--precision", default="auto",
                        help="auto (default: bf16 where the GPU or CPU multiplies it natively, faster, masks within "
                             "Dice 0.995; else float32), float32 (bit-reproducible) or bfloat16")
    parser.add_argument("--overlap", type=float, help="window overlap in [0, 1) (default 0.5; 0.25 with --fast)")
    parser.add_argument("--blending", choices=("gaussian", "uniform"), default="gaussian")
    parser.add_argument("--batch-size", type=int, default=2,
                        help="windows per forward pass (default 2; 1 halves the network's memory but is slower on the CPU)")
    parser.add_argument("--fast", action="store_true", help="fewer windows (overlap 0.25): about 2x faster, slightly rougher")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold per target (default 0.5)")
    parser.add_argument("--no-side-constraint", action="store_true",
                        help="do not keep left/right organs on their side of the body's midline")
    parser.add_argument("--no-single-piece", action="store_true",
                        help="do not reduce compact organs (liver, a kidney, a lung, ...) to their largest part")
    parser.add_argument("--keep-largest", action="store_true",
                        help="keep only the largest connected component of every target (tubes and lesions too)")
    parser.add_argument("--fill-holes", action="store_true", help="fill enclosed holes in each target")
    parser.add_argument("--min-island-ml", type=float, help="remove islands smaller than this many mL")
    parser.add_argument("--no-body-crop", action="store_true", help="run windows over the whole field of view")
    parser.add_argument("--probabilities", action="store_true", help="also write per-target probability maps (uint8)")
    parser.add_argument("--frame", type=int, help="frame to segment in a 4D image")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    parser.add_argument("--progress-json", action="store_true", help="print progress as JSON lines (for the Slicer module)")
    parser.set_defaults(func=run)


def case_name(path: Path) -> str:
    name = path.name
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, globs, folders of images, or folders that hold a DICOM series (one case each)."""
    cases: list[Path] = []
    for item in inputs:
        matches = [Path(p) for p in sorted(glob.glob(item))] if glob.has_magic(item) else [Path(item)]
        if not matches:
            raise HermesError(f"no file matches {item!r}")
        for path in matches:
            if path.is_dir():
                images = [p for p in sorted(path.iterdir())
                          if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.endswith(".seg.nrrd")]
                cases.extend(images or [path])  # no image files: treat the folder as a DICOM series
            else:
                cases.append(path)
    return cases


def _unique_names(paths: list[Path]) -> list[str]:
    names, seen = [], {}
    for path in paths:
        name = case_name(path)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names


class _Progress:
    """Progress for one case, as JSON lines (for the Slicer process) or a tqdm bar."""

    def __init__(self, case: str, as_json: bool) -> None:
        self.case, self.as_json, self.bar = case, as_json, None

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        if self.as_json:
            print(json.dumps({"case": self.case, "stage": stage, "fraction": round(fraction, 4), "message": message}),
                  flush=True)
            return
        if stage == "inference":
            from tqdm import tqdm

            if self.bar is None:
                self.bar = tqdm(total=100, desc=f"  {self.case}", unit="%", leave=False, file=sys.stderr)
            self.bar.update(round(fraction * 100) - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(args: argparse.Namespace) -> int:
    from .. import vocabulary, writers
    from ..postprocess import PostprocessOptions
    from ..read import read_image
    from ..inference import compute_dtype, describe, precision_name, select_device
    from ..models import load
    from ..pipeline import resolve_targets, segment_image

    if args.overlap is not None and not 0 <= args.overlap < 1:
        raise HermesError(f"--overlap must be in [0, 1), got {args.overlap}")
    # Mistakes in the request fail before any case is read.
    modality = vocabulary.modality(args.modality).key
    device = select_device(args.device)
    dtype = compute_dtype(device, args.precision)
    model = load(args.model, device="cpu")
    targets = resolve_targets(model, modality, args.targets)
    paths = expand_inputs(args.inputs)
    options = PostprocessOptions(keep_largest=args.keep_largest, fill_holes=args.fill_holes,
                                 min_island_ml=args.min_island_ml,
                                 side_constraint=not args.no_side_constraint,
                                 single_piece=not args.no_single_piece)
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = OUTPUT_SUFFIX[args.format]
    log_line = (lambda text: print(json.dumps({"message": text}), flush=True)) if args.progress_json else \
        (lambda text: print(text, file=sys.stderr))
    log_line(f"{model.name} on {describe(device)} ({precision_name(dtype)}): {len(paths)} case(s), {modality}, "
             f"targets: {', '.join(targets)}")

    from tqdm import tqdm

    failures: list[str] = []
    names = _unique_names(paths)
    for path, name in tqdm(list(zip(paths, names)), desc="cases", unit="case", disable=args.progress_json or len(paths) < 2,
                           file=sys.stderr):
        destination = args.out / f"{name}{suffix}"
        if destination.exists() and not args.overwrite:
            log_line(f"{name}: output exists, skipped (use --overwrite to redo)")
            continue
        progress = _Progress(name, args.progress_json)
        try:
            started = time.perf_counter()
            image = read_image(path, frame=args.frame)
            result = segment_image(
                image, modality=modality, targets=targets, model=model, device=str(device), precision=args.precision,
                overlap=args.overlap, blending=args.blending, batch_size=args.batch_size, fast=args.fast,
                crop_to_body=not args.no_body_crop, threshold=args.threshold, postprocess=options,
                keep_probabilities=args.probabilities, progress=progress,
            )
            del image
            if args.format == "seg-nrrd":
                writers.write_seg_nrrd(destination, result.masks, result.reference)
            else:
                writers.write_label_map_nifti(destination, result.masks, result.reference,
                                              overlap_policy=args.overlap_policy)
            if args.probabilities:
                writers.write_probability_maps(args.out / f"{name}_probabilities", result.probability_maps(),
                                               result.reference)
            seconds = time.perf_counter() - started
            spacing = result.reference.GetSpacing()
            writers.append_summary_csv(args.out / "summary.csv", [
                {"case": name, "target": m.key, "voxels": m.voxels, "volume_ml": round(m.volume_ml(spacing), 3),
                 "seconds": round(seconds, 2)} for m in result.masks])
            log_line(f"{name}: {len(result.masks)} targets in {seconds:.1f} s -> {destination}")
        except CancelledError:
            raise
        except HermesError as error:
            failures.append(name)
            print(f"error: {name}: {error}", file=sys.stderr)
        except Exception as error:  # noqa: BLE001 - one broken case must not stop a batch of hundreds
            failures.append(name)
            log.debug("case %s failed", name, exc_info=True)
            print(f"error: {name}: unexpected {type(error).__name__}: {error} (please report this)", file=sys.stderr)
        finally:
            progress.close()
    if failures:
        print(f"error: {len(failures)} of {len(paths)} case(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0
