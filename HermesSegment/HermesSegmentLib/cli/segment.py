"""`hermes-segment segment`: segment files, folders, globs and DICOM series folders in one batch.

One bad case is reported and the batch goes on; the exit status is 1 when some cases failed.
Cases whose output already exists are skipped unless ``--overwrite``. Every file is written
atomically, so an interrupted run leaves no partial output.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import CancelledError, HermesError
from ..read import IMAGE_SUFFIXES, case_name

if TYPE_CHECKING:
    from ..pipeline.options import SegmentOptions
    from ..writers import SegmentationWriter

log = logging.getLogger(__name__)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from .. import writers
    from ..pipeline import options

    parser = subparsers.add_parser("segment", help="segment images (files, folders, globs, DICOM series folders)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders, globs or DICOM series folders")
    parser.add_argument("--modality", required=True, help="CT, PET, MR-T1, MR-T2, cine-MR or MR")
    parser.add_argument("--targets", default="all", help="comma-separated targets, or 'all' (default)")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    formats = [f"{name} ({writer.description})" for name, writer in writers.FORMATS.items()]
    parser.add_argument("--format", choices=sorted(writers.FORMATS), default="seg-nrrd",
                        help=", ".join(formats[:-1]) + f" or {formats[-1]}" if len(formats) > 1 else formats[0])
    parser.add_argument("--overlap-policy", choices=("priority", "per_target"), default="priority",
                        help="nifti only: one label map where later targets win, or one file per target")
    options.add_arguments(parser)
    parser.add_argument("--probabilities", action="store_true", help="also write per-target probability maps (uint8)")
    parser.add_argument("--frame", type=int, help="frame to segment in a 4D image")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    parser.add_argument("--progress-json", action="store_true",
                        help="print progress as JSON lines (for the Slicer module)")
    parser.set_defaults(func=run)


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, globs, folders of images, or folders that hold a DICOM series (one case each)."""
    cases: list[Path] = []
    for item in inputs:
        matches = [Path(p) for p in sorted(glob.glob(item))] if glob.has_magic(item) else [Path(item)]
        if not matches:
            raise HermesError(f"no file matches {item!r}")
        for path in matches:
            if path.is_dir():
                images = [p for p in sorted(path.iterdir()) if p.is_file()
                          and p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.endswith(".seg.nrrd")]
                cases.extend(images or [path])  # no image files: treat the folder as a DICOM series
            else:
                cases.append(path)
    return cases


def _unique_names(paths: list[Path]) -> list[str]:
    names: list[str] = []
    seen: dict[str, int] = {}
    for path in paths:
        name = case_name(path)
        seen[name] = seen.get(name, 0) + 1
        names.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return names


class _Progress:
    """Progress for one case, as JSON lines (for the Slicer process) or a tqdm bar."""

    def __init__(self, case: str, as_json: bool) -> None:
        self.case, self.as_json = case, as_json
        self.bar: Any = None  # a tqdm bar once inference starts

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
    from ..inference import compute_dtype, describe, precision_name, select_device
    from ..models import LoadedModel, load
    from ..pipeline import options as segment_options
    from ..pipeline import resolve_targets

    options = segment_options.from_args(args)
    if options.overlap is not None and not 0 <= options.overlap < 1:
        raise HermesError(f"--overlap must be in [0, 1), got {options.overlap}")
    # Mistakes in the request fail before any case is read.
    modality = vocabulary.modality(args.modality).key
    device = select_device(options.device)
    dtype = compute_dtype(device, options.precision)
    model = options.model if isinstance(options.model, LoadedModel) else load(options.model, device="cpu")
    options = dataclasses.replace(options, model=model, device=str(device))
    targets = resolve_targets(model, modality, args.targets)
    paths = expand_inputs(args.inputs)
    args.out.mkdir(parents=True, exist_ok=True)
    writer = writers.FORMATS[args.format]
    log_line = _log_line(args.progress_json)
    log_line(f"{model.name} on {describe(device)} ({precision_name(dtype)}): {len(paths)} case(s), {modality}, "
             f"targets: {', '.join(targets)}")

    from tqdm import tqdm

    cases = list(zip(paths, _unique_names(paths)))
    failures = [name for path, name in tqdm(cases, desc="cases", unit="case", file=sys.stderr,
                                            disable=args.progress_json or len(paths) < 2)
                if not _segment_case(path, name, args, modality=modality, targets=targets, options=options,
                                     writer=writer, log_line=log_line)]
    if failures:
        print(f"error: {len(failures)} of {len(paths)} case(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    return 0


def _log_line(as_json: bool) -> Callable[[str], None]:
    """Where a line for the user goes: a JSON message on stdout (the Slicer module reads it), or stderr."""
    if as_json:
        return lambda text: print(json.dumps({"message": text}), flush=True)
    return lambda text: print(text, file=sys.stderr)


def _segment_case(path: Path, name: str, args: argparse.Namespace, *, modality: str, targets: list[str],
                  options: SegmentOptions, writer: SegmentationWriter, log_line: Callable[[str], None]) -> bool:
    """Segment one case and write its outputs; False when it failed (the error is printed)."""
    from .. import writers
    from ..pipeline import segment_image
    from ..read import read_image

    destination = args.out / f"{name}{writer.suffix}"
    if destination.resolve() == path.resolve():
        print(f"error: {name}: the output would write over the input {path}; choose another --out", file=sys.stderr)
        return False
    if destination.exists() and not args.overwrite:
        log_line(f"{name}: output exists, skipped (use --overwrite to redo)")
        return True
    progress = _Progress(name, args.progress_json)
    try:
        started = time.perf_counter()
        image = read_image(path, frame=args.frame)
        result = segment_image(image, modality=modality, targets=targets, options=options,
                               keep_probabilities=args.probabilities, progress=progress)
        del image
        writer.write(destination, result.masks, result.reference, overlap_policy=args.overlap_policy)
        if args.probabilities:
            writers.write_probability_maps(args.out / f"{name}_probabilities", result.probability_maps(),
                                           result.reference)
        seconds = time.perf_counter() - started
        spacing = result.reference.GetSpacing()
        writers.append_summary_csv(args.out / "summary.csv", [
            {"case": name, "target": m.key, "voxels": m.voxels, "volume_ml": round(m.volume_ml(spacing), 3),
             "seconds": round(seconds, 2)} for m in result.masks])
        log_line(f"{name}: {len(result.masks)} targets in {seconds:.1f} s -> {destination}")
        return True
    except CancelledError:
        raise
    except HermesError as error:
        print(f"error: {name}: {error}", file=sys.stderr)
    except Exception as error:  # one broken case must not stop a batch of hundreds
        log.debug("case %s failed", name, exc_info=True)
        print(f"error: {name}: unexpected {type(error).__name__}: {error} (please report this)", file=sys.stderr)
    finally:
        progress.close()
    return False
