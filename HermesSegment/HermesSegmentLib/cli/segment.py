"""`hermes-segment segment`: segment files, folders, globs and DICOM series folders in one batch.

One bad case is reported and the batch goes on; the exit status is 1 when some cases failed.
A case is done, and skipped unless ``--overwrite``, when its record names this very input (see
``batch``). Outputs never replace an input or a file this tool did not write, and the output
folder is checked before any case is read. A case's files appear together or not at all: SIGTERM
and Ctrl-C remove the case in progress and exit with 128 + the signal number. The engine's
warnings are printed as ``warning: CASE: ...`` (JSON lines with ``--progress-json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import notices
from ..errors import CancelledError, HermesError

if TYPE_CHECKING:
    from ..batch import Case
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
    parser.add_argument("--series", help="DICOM folders holding several series: the series to read, by its UID or "
                                         "a part of its description (default: the modality's series with most slices)")
    parser.add_argument("--overwrite", action="store_true", help="redo cases whose output exists")
    parser.add_argument("--progress-json", action="store_true",
                        help="print progress as JSON lines (for the Slicer module)")
    parser.set_defaults(func=run)


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
    from .. import batch, vocabulary, writers
    from ..inference import compute_dtype, describe, precision_name, select_device
    from ..models import LoadedModel, load
    from ..pipeline import options as segment_options
    from ..pipeline import resolve_targets

    options = segment_options.from_args(args)
    if options.overlap is not None and not 0 <= options.overlap < 1:
        raise HermesError(f"--overlap must be in [0, 1), got {options.overlap}")
    # Mistakes in the request, and an output folder that cannot be written, fail before any case is read.
    modality = vocabulary.modality(args.modality).key
    device = select_device(options.device)
    dtype = compute_dtype(device, options.precision)
    model = options.model if isinstance(options.model, LoadedModel) else load(options.model, device="cpu")
    options = dataclasses.replace(options, model=model, device=str(device))
    targets = resolve_targets(model, modality, args.targets)
    paths = batch.find_cases(args.inputs)
    batch.prepare_out_dir(args.out)
    writer = writers.FORMATS[args.format]

    def file_names(name: str) -> list[str]:
        names = writer.file_names(name, targets, overlap_policy=args.overlap_policy)
        probabilities = [writers.probability_map_name(f"{name}_probabilities", key) for key in targets]
        return names + (probabilities if args.probabilities else [])

    cases = batch.plan(paths, args.out, file_names, overwrite=args.overwrite)
    run_case = _CaseRunner(args, modality=modality, targets=targets, options=options, writer=writer,
                           request={"model": model.name, "modality": modality, "targets": targets,
                                    "format": args.format, "frame": args.frame, "series": args.series})
    run_case.log_line(f"{model.name} on {describe(device)} ({precision_name(dtype)}): {len(cases)} case(s), "
                      f"{modality}, targets: {', '.join(targets)}")
    return run_case.all(cases)


class _CaseRunner:
    """Segments the cases one by one; says what happens (lines above the progress bars, or JSON)."""

    def __init__(self, args: argparse.Namespace, *, modality: str, targets: list[str], options: SegmentOptions,
                 writer: SegmentationWriter, request: dict) -> None:
        self.args, self.modality, self.targets, self.options = args, modality, targets, options
        self.writer, self.request = writer, request
        self.case = ""

    def say(self, text: str) -> None:
        """A line on stderr, above the progress bars rather than through them."""
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)

    def log_line(self, text: str) -> None:
        if self.args.progress_json:
            print(json.dumps({"message": text}), flush=True)
        else:
            self.say(text)

    def warn(self, text: str) -> None:
        """An engine warning (:mod:`notices`), for the case in progress."""
        if self.args.progress_json:
            print(json.dumps({"case": self.case, "warning": text}), flush=True)
        else:
            self.say(f"warning: {self.case}: {text}" if self.case else f"warning: {text}")

    def all(self, cases: list[Case]) -> int:
        """Every case; the exit status (1 if some failed, 128 + signal number if interrupted)."""
        from tqdm import tqdm

        failures = []
        with notices.attached(notices.Handler(self.warn)):
            try:
                for case in tqdm(cases, desc="cases", unit="case", file=sys.stderr,
                                 disable=self.args.progress_json or len(cases) < 2):
                    self.case = case.name
                    if case.done:
                        self.log_line(f"{case.name}: done earlier from this input ({case.path}), skipped "
                                      "(use --overwrite to redo)")
                    elif not self.one(case):
                        failures.append(case.name)
            except KeyboardInterrupt as interrupt:
                where = f" while segmenting {self.case}" if self.case else ""
                print(f"error: interrupted by {getattr(interrupt, 'signal_name', 'Ctrl-C')}{where}: its files were "
                      "removed and it is not counted as done; run the same command again to go on", file=sys.stderr)
                return 128 + getattr(interrupt, "signal_number", 2)
        if failures:
            print(f"error: {len(failures)} of {len(cases)} case(s) failed: {', '.join(failures)}", file=sys.stderr)
            return 1
        return 0

    def one(self, case: Case) -> bool:
        """Segment one case and write its files; False when it failed (the error is printed)."""
        from .. import batch, writers
        from ..pipeline import segment_image
        from ..read import read_image

        args, name = self.args, case.name
        progress = _Progress(name, args.progress_json)
        stage = "reading the image"
        try:
            started = time.perf_counter()
            image = read_image(case.path, frame=args.frame, series=args.series, modality=self.modality)
            stage = "segmenting"
            result = segment_image(image, modality=self.modality, targets=self.targets, options=self.options,
                                   keep_probabilities=args.probabilities, progress=progress)
            del image
            stage = "writing the outputs"
            with batch.case_files(args.out, case, self.request) as staging:
                self.writer.write(staging / f"{name}{self.writer.suffix}", result.masks, result.reference,
                                  overlap_policy=args.overlap_policy)
                if args.probabilities:
                    writers.write_probability_maps(staging / f"{name}_probabilities", result.probability_maps(),
                                                   result.reference)
            seconds = time.perf_counter() - started
            spacing = result.reference.GetSpacing()
            writers.write_summary_rows(args.out / "summary.csv", name, [
                {"case": name, "target": m.key, "voxels": m.voxels, "volume_ml": round(m.volume_ml(spacing), 3),
                 "seconds": round(seconds, 2)} for m in result.masks])
            self.log_line(f"{name}: {len(result.masks)} targets in {seconds:.1f} s -> "
                          f"{args.out / (name + self.writer.suffix)}")
            return True
        except CancelledError:
            raise
        except HermesError as error:
            self.say(f"error: {name}: {error}")
        except Exception as error:  # one broken case must not stop a batch of hundreds
            log.debug("case %s failed", name, exc_info=True)
            self.say(f"error: {name}: {_unexpected(error, stage, args.out)}")
        finally:
            progress.close()
        return False


def _unexpected(error: Exception, stage: str, out: Path) -> str:
    """The line for an error that is not a :class:`HermesError`: memory, a full or failing disk, or a bug."""
    from ..memory import is_memory_error, out_of_memory

    if is_memory_error(error):
        return str(out_of_memory(stage, error))
    if isinstance(error, OSError) and stage == "writing the outputs":
        return (f"cannot write to {out} ({error.strerror or error}); nothing of this case was kept: free some space "
                "or choose another --out")
    return f"unexpected {type(error).__name__}: {error} (please report this)"
