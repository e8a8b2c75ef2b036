"""`hermes-segment segment`: segment files, folders, globs and DICOM series folders in one batch.

One bad case is reported and the batch goes on; the exit status is 1 when some cases failed.
A case is done, and skipped unless ``--overwrite``, when its record names this very input (see
``batch``). Outputs never replace an input or a file this tool did not write, and the output
folder is checked before any case is read. A case's files appear together or not at all: SIGTERM
and Ctrl-C remove the case in progress and exit with 128 + the signal number. The engine's
warnings are printed as ``warning: CASE: ...`` (JSON lines with ``--progress-json``).

The cases run on this computer, or on a server (``--server URL``: each case uploaded, segmented
there, its files downloaded: the same files). Started by ``torchrun --nproc_per_node N``, each of
the N processes takes its share of the cases (:class:`_Shard`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
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
    parser.add_argument("--server", metavar="URL",
                        help="segment on a `hermes-segment serve` server (e.g. https://gpu.example.org) instead of "
                             "this computer; --device and --batch-size are then the server's")
    parser.add_argument("--token", help="the server's token (default: $HERMES_SEGMENT_TOKEN)")
    parser.set_defaults(func=run)


class _Progress:
    """Progress for one case, as JSON lines (for the Slicer process) or a tqdm bar."""

    def __init__(self, case: str, as_json: bool) -> None:
        self.case, self.as_json = case, as_json
        self.bar: Any = None  # a tqdm bar once inference starts

    def __call__(self, stage: str, fraction: float, message: str) -> None:
        if self.as_json:
            _write_line(json.dumps({"case": self.case, "stage": stage, "fraction": round(fraction, 4),
                                    "message": message}))
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
    from .. import batch, writers
    from ..pipeline import options as segment_options

    options = segment_options.from_args(args)
    options.check()
    writers.check_overlap_policy(args.format, args.overlap_policy)
    shard = _Shard.from_environment(options.device)
    # Mistakes in the request, and an output folder that cannot be written, fail before any case is read.
    engine: _Engine = _ServerEngine(args, options) if args.server else _LocalEngine(args, options, shard.device)
    request = {"model": engine.model_name, "modality": engine.modality, "targets": engine.targets,
               "format": args.format, "frame": args.frame, "series": args.series,
               **({"server": args.server} if args.server else {})}
    # What is left out while finding the cases is said as the cases' warnings are (JSON with --progress-json).
    with notices.attached(notices.Handler(lambda text: _warning_line(text, args.progress_json))):
        paths = batch.find_cases(args.inputs)
    batch.prepare_out_dir(args.out)
    writers.check_summary(args.out / shard.summary_name)  # another table called summary.csv: refused now
    writer = writers.FORMATS[args.format]

    def file_names(name: str) -> list[str]:
        names = writer.file_names(name, engine.targets, overlap_policy=args.overlap_policy)
        probabilities = [writers.probability_map_name(f"{name}_probabilities", key) for key in engine.targets]
        return names + (probabilities if args.probabilities else [])

    cases = batch.plan(paths, args.out, file_names, overwrite=args.overwrite,
                       request=request)[shard.rank::shard.world_size]
    run_case = _CaseRunner(args, engine, writer, shard, request=request)
    run_case.log_line(f"{engine.description}: {len(cases)} case(s){shard.of_all(len(paths))}, {engine.modality}, "
                      f"targets: {', '.join(engine.targets)}")
    try:
        return run_case.all(cases)
    finally:
        shard.merge_summaries(args.out)


def _warning_line(text: str, as_json: bool) -> None:
    """A warning that belongs to no case: ``warning: ...`` on stderr, or a JSON line."""
    _write_line(json.dumps({"warning": text}) if as_json else f"warning: {text}", None if as_json else sys.stderr)


def _write_line(text: str, stream: Any = None) -> None:
    """One write per line (stdout by default): the processes of a torchrun batch share the terminal
    or pipe, and print() writes the newline apart, so their lines would run into each other."""
    stream = stream or sys.stdout
    stream.write(text + "\n")
    stream.flush()


class _Engine:
    """Where the cases are segmented: ``description`` (model, device), the resolved ``modality``,
    ``targets`` and ``model_name``, and :meth:`segment`."""

    description: str
    modality: str
    targets: list[str]
    model_name: str

    def segment(self, case: Case, staging: Path, progress: _Progress, runner: _CaseRunner) -> list[dict[str, Any]]:
        """Segment ``case`` and write its files into ``staging``; returns its summary rows (no seconds).
        ``runner.stage`` says what is being done (for the error line), ``runner.warn`` passes warnings on."""
        raise NotImplementedError


class _LocalEngine(_Engine):
    """This computer: the model loaded once, ``segment_image`` on each case."""

    def __init__(self, args: argparse.Namespace, options: SegmentOptions, device: str) -> None:
        from .. import vocabulary, writers
        from ..inference import compute_dtype, describe, precision_name, select_device
        from ..models import LoadedModel, load
        from ..pipeline import resolve_targets

        self.args = args
        self.modality = vocabulary.modality(args.modality).key
        torch_device = select_device(device)
        dtype = compute_dtype(torch_device, options.precision)
        model = options.model if isinstance(options.model, LoadedModel) else load(options.model, device="cpu")
        self.options = dataclasses.replace(options, model=model, device=str(torch_device))
        self.targets = resolve_targets(model, self.modality, args.targets)
        self.model_name = model.name
        self.writer = writers.FORMATS[args.format]
        self.description = f"{model.name} on {describe(torch_device)} ({precision_name(dtype)})"

    def segment(self, case: Case, staging: Path, progress: _Progress, runner: _CaseRunner) -> list[dict[str, Any]]:
        from ..pipeline import segment_image
        from ..read import read_image
        from ..writers.case import summary_rows, write_case

        args = self.args
        runner.stage = "reading the image"
        image = read_image(case.path, frame=args.frame, series=args.series, modality=self.modality)
        runner.stage = "segmenting"
        result = segment_image(image, modality=self.modality, targets=self.targets, options=self.options,
                               keep_probabilities=args.probabilities, progress=progress)
        del image
        runner.stage = "writing the outputs"
        write_case(staging, case.name, result, self.writer, overlap_policy=args.overlap_policy,
                   probabilities=args.probabilities)
        return summary_rows(case.name, result)


class _ServerEngine(_Engine):
    """A `hermes-segment serve` server: each case uploaded, segmented there, its files downloaded."""

    def __init__(self, args: argparse.Namespace, options: SegmentOptions) -> None:
        from ..server.client import ServerClient, job_request

        self.args = args
        self.client = ServerClient(args.server, args.token)
        self.request = job_request(args.modality, args.targets, options, format=args.format,
                                   overlap_policy=args.overlap_policy, probabilities=args.probabilities,
                                   frame=args.frame, series=args.series)
        checked = self.client.check(self.request)
        self.modality, self.targets, self.model_name = checked["modality"], checked["targets"], checked["model"]
        self.request["targets"] = self.targets
        self.description = f"{self.model_name} on {', '.join(self.client.info()['devices'])} at {self.client.url}"

    def segment(self, case: Case, staging: Path, progress: _Progress, runner: _CaseRunner) -> list[dict[str, Any]]:
        runner.stage = "segmenting on the server"
        status, _ = self.client.segment(case.path, {**self.request, "name": case.name}, staging, progress=progress,
                                        exclude=("summary.csv",))
        for warning in status["warnings"]:
            runner.warn(warning)
        return [{"case": case.name, **row} for row in status["summary"]]


class _Shard:
    """This process's share of a batch under ``torchrun`` (rank ``rank`` of ``world_size``: every
    ``world_size``-th case from the ``rank``-th), or the whole batch without it.

    The ranks join torchrun's process group (gloo: it only waits at the end); each runs on its own
    GPU (``cuda:<LOCAL_RANK>``) and writes its summary rows to its own file, which rank 0 merges into
    ``summary.csv`` once every rank is done. Case names and files are those of a single-process run:
    every rank plans the whole batch the same way, then takes its share.
    """

    def __init__(self, rank: int = 0, world_size: int = 1, device: str = "auto") -> None:
        self.rank, self.world_size, self.device = rank, world_size, device

    @classmethod
    def from_environment(cls, device: str) -> _Shard:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls(device=device)
        import torch.distributed as dist

        from ..inference import select_device

        if select_device(device).type == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
        return cls(dist.get_rank(), dist.get_world_size(), device)

    @property
    def prefix(self) -> str:
        return f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""

    @property
    def summary_name(self) -> str:
        return "summary.csv" if self.world_size == 1 else f".summary-rank{self.rank}.csv"

    def of_all(self, total: int) -> str:
        return f" (of {total})" if self.world_size > 1 else ""

    def merge_summaries(self, out: Path) -> None:
        """Rank 0, once all ranks are done: the ranks' summary rows into ``summary.csv``."""
        if self.world_size == 1:
            return
        import csv

        import torch.distributed as dist

        from ..writers import write_summary_rows

        dist.barrier()
        if self.rank == 0:
            for part in sorted(out.glob(".summary-rank*.csv")):
                with open(part, newline="", encoding="utf-8") as stream:
                    rows = list(csv.DictReader(stream))
                for case in dict.fromkeys(row["case"] for row in rows):
                    write_summary_rows(out / "summary.csv", case, [row for row in rows if row["case"] == case])
                part.unlink()
        dist.barrier()
        dist.destroy_process_group()


class _CaseRunner:
    """Segments the cases one by one; says what happens (lines above the progress bars, or JSON)."""

    def __init__(self, args: argparse.Namespace, engine: _Engine, writer: SegmentationWriter, shard: _Shard,
                 request: dict) -> None:
        self.args, self.engine, self.writer, self.shard, self.request = args, engine, writer, shard, request
        self.case = ""
        self.stage = ""  # what the case in progress is doing, for an unexpected error's line

    def say(self, text: str) -> None:
        """A line on stderr, above the progress bars rather than through them (one write: see _write_line)."""
        from tqdm import tqdm

        with tqdm.external_write_mode(file=sys.stderr):
            _write_line(self.shard.prefix + text, sys.stderr)

    def log_line(self, text: str) -> None:
        if self.args.progress_json:
            _write_line(json.dumps({"message": self.shard.prefix + text}))
        else:
            self.say(text)

    def warn(self, text: str) -> None:
        """An engine warning (:mod:`notices`), for the case in progress."""
        if self.args.progress_json:
            _write_line(json.dumps({"case": self.case, "warning": text}))
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
                self.say(f"error: interrupted by {getattr(interrupt, 'signal_name', 'Ctrl-C')}{where}: its files were "
                         "removed and it is not counted as done; run the same command again to go on")
                return 128 + getattr(interrupt, "signal_number", 2)
        if failures:
            self.say(f"error: {len(failures)} of {len(cases)} case(s) failed: {', '.join(failures)}")
            return 1
        return 0

    def one(self, case: Case) -> bool:
        """Segment one case and write its files; False when it failed (the error is printed)."""
        from .. import batch, writers

        args, name = self.args, case.name
        progress = _Progress(name, args.progress_json)
        try:
            started = time.perf_counter()
            with batch.case_files(args.out, case, self.request) as staging:
                rows = self.engine.segment(case, staging, progress, self)
                self.stage = "writing the outputs"
                seconds = time.perf_counter() - started
                # Before the record: a case is done only once its rows are in the summary too.
                writers.write_summary_rows(args.out / self.shard.summary_name, name,
                                           [{**row, "seconds": round(seconds, 2)} for row in rows])
            made = self.writer.file_names(name, self.engine.targets, overlap_policy=args.overlap_policy)
            more = f" and {len(made) - 1} more file(s)" if len(made) > 1 else ""
            self.log_line(f"{name}: {len(rows)} targets in {seconds:.1f} s -> {args.out / made[0]}{more}")
            return True
        except CancelledError:
            raise
        except HermesError as error:
            self.say(f"error: {name}: {error}")
        except Exception as error:  # one broken case must not stop a batch of hundreds
            log.debug("case %s failed", name, exc_info=True)
            self.say(f"error: {name}: {_unexpected(error, self.stage, args.out)}")
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
