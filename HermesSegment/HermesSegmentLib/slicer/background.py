"""Run the segmentation engine in a separate process, off Slicer's GUI thread.

The widget starts ``PythonSlicer -m HermesSegmentLib.cli segment ... --progress-json`` through
:class:`BackgroundRun`, then polls :meth:`BackgroundRun.poll` from a ``qt.QTimer`` (this file
imports no Qt). Reader threads turn the child's stdout into :class:`ProgressEvent` objects (one
JSON object per line: ``{"stage": ..., "fraction": ..., "message": ...}``) and log lines; stderr
is kept so that a failure reaches the user as one readable line (the CLI prints ``error: ...``).

:meth:`BackgroundRun.cancel` ends the whole process tree: the child is started in a new session
(POSIX) or a new process group (Windows), and the group is killed (``taskkill /T`` on Windows), so
worker processes of the engine die with it.
"""

from __future__ import annotations

import importlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Union

from ..pipeline.options import SegmentOptions

#: Folder holding ``HermesSegmentLib``: put on the child's PYTHONPATH so ``-m`` finds it.
MODULE_DIR = Path(__file__).resolve().parents[2]


#: The progress contract. The engine (``pipeline.segment_image``, and the CLI's ``--progress-json``
#: lines) reports ``(stage, fraction of that stage, message)``; a stage's share of the whole run is its
#: weight here (measured: the network is > 90% of the time of a CT on the CPU, less on a GPU).
#: A run on a server also reports waiting in its queue, reading the upload and writing the result
#: (``server.jobs``): no share of the bar, so that it neither jumps ahead nor goes back.
STAGE_WEIGHTS: dict[str, float] = {"queued": 0.0, "reading": 0.0, "preprocess": 0.05, "inference": 0.9,
                                   "postprocess": 0.05, "writing": 0.0}


def overall_fraction(stage: str, fraction: float) -> float:
    """The whole run's fraction done (0-1) at ``fraction`` of ``stage``; a stage not in
    :data:`STAGE_WEIGHTS` (another program's) is taken as the whole run."""
    fraction = min(max(fraction, 0.0), 1.0)
    done = 0.0
    for name, weight in STAGE_WEIGHTS.items():
        if name == stage:
            return min(1.0, done + weight * fraction)
        done += weight
    return fraction


@dataclass(frozen=True)
class ProgressEvent:
    """One progress report of the engine: stage name, fraction of that stage done (0-1), message."""

    stage: str
    fraction: float
    message: str = ""

    @property
    def overall(self) -> float:
        """Fraction of the whole run done (see :data:`STAGE_WEIGHTS`)."""
        return overall_fraction(self.stage, self.fraction)


@dataclass(frozen=True)
class LogLine:
    """A line of text the child printed: ``stream`` is ``"stdout"`` or ``"stderr"``, or
    ``"warning"`` for a warning of the engine (the CLI's JSON ``{"case", "warning"}`` lines: a
    resampled series, a conversion to Hounsfield units, a skipped rule; see ``notices``)."""

    stream: str
    text: str


Event = Union[ProgressEvent, LogLine]


def segment_command(
    input_path: str | Path,
    output_dir: str | Path,
    *,
    modality: str,
    targets: Sequence[str],
    options: SegmentOptions | None = None,
    python: str | None = None,
    server: str = "",
) -> list[str]:
    """The command line of ``hermes-segment segment`` for one image, with JSON progress on stdout.

    ``options`` (:class:`SegmentOptions`) become the command's options (:meth:`SegmentOptions.command_line`).
    ``server``: the address of a `hermes-segment serve` server to run on (``--server``). The result
    is ``<output_dir>/<input stem>.seg.nrrd``. ``python`` defaults to ``sys.executable``
    (``PythonSlicer`` inside Slicer).
    """
    return [
        python or sys.executable, "-m", "HermesSegmentLib.cli", "segment", str(input_path),
        "--out", str(output_dir), "--modality", modality, "--targets", ",".join(targets), "--progress-json",
        *(options or SegmentOptions()).command_line(), *(["--server", server] if server else []),
    ]


def start_segmentation(image: Any, run_dir: Path, *, modality: str, targets: Sequence[str],
                       options: SegmentOptions | None = None, python: str | None = None, server: str = "",
                       token: str = "", client_id: str = "") -> tuple[BackgroundRun, Path]:
    """Write ``image`` (SimpleITK) to ``run_dir/input.nrrd`` and start the engine on it, on this
    computer or on ``server`` (its ``token`` goes to the child in its environment, never on its
    command line, which other users of the computer can see; so does the ``client_id`` to send,
    "" for the installation's).

    Returns the started run and the path the result will have (``run_dir/input.seg.nrrd``).
    """
    import SimpleITK as sitk

    from ..server.protocol import CLIENT_ID_ENV, TOKEN_ENV

    run_dir.mkdir(parents=True, exist_ok=True)
    input_path = run_dir / "input.nrrd"
    sitk.WriteImage(image, str(input_path), True)
    command = segment_command(input_path, run_dir, modality=modality, targets=targets, options=options, python=python,
                              server=server)
    given = {name: value for name, value in ((TOKEN_ENV, token), (CLIENT_ID_ENV, client_id)) if value} if server else {}
    environment = {**os.environ, **given} if given else None
    return BackgroundRun(command, env=environment).start(), run_dir / "input.seg.nrrd"


def parse_progress(line: str) -> ProgressEvent | None:
    """A :class:`ProgressEvent` from one JSON stdout line, or ``None`` if the line is not one."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
        return ProgressEvent(str(record["stage"]), float(record["fraction"]), str(record.get("message", "")))
    except (ValueError, KeyError, TypeError):
        return None


def parse_log_line(line: str) -> LogLine | None:
    """The CLI's JSON ``{"message": ...}`` and ``{"case": ..., "warning": ...}`` lines as readable
    :class:`LogLine` objects; ``None`` for anything else."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    if "warning" in record:
        return LogLine("warning", str(record["warning"]))
    if "message" in record and "stage" not in record:
        return LogLine("stdout", str(record["message"]))
    return None


def error_line(stderr_lines: Sequence[str], returncode: int | None) -> str:
    """The one line to show the user for a failed run.

    Prefers the CLI's ``error: ...`` line; else the last non-empty stderr line (e.g. the final
    line of a traceback); else the exit status.
    """
    for line in reversed(stderr_lines):
        if line.startswith("error:"):
            return line[len("error:") :].strip()
    for line in reversed(stderr_lines):
        if line.strip():
            return line.strip()
    return f"the segmentation process stopped with exit status {returncode}"


class BackgroundRun:
    """One child process, its output streamed to a queue; poll it, wait for it or cancel it."""

    def __init__(
        self, command: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | Path | None = None
    ) -> None:
        self.command = list(command)
        self._env = dict(os.environ if env is None else env)
        self._env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(MODULE_DIR), self._env.get("PYTHONPATH", "")) if p
        )
        self._env.setdefault("PYTHONUNBUFFERED", "1")
        self._cwd = cwd
        self._events: queue.Queue[Event] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._process: subprocess.Popen[str] | None = None
        self.stderr_lines: list[str] = []
        self.warnings: list[str] = []
        self.cancelled = False
        self.started_at = 0.0
        self.last_progress: ProgressEvent | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> BackgroundRun:
        """Start the child in its own process group/session; returns ``self``."""
        kwargs: dict = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, encoding="utf-8", errors="replace", env=self._env, cwd=self._cwd, **kwargs,
        )
        self.started_at = time.monotonic()
        for stream, name in ((self._process.stdout, "stdout"), (self._process.stderr, "stderr")):
            thread = threading.Thread(target=self._read, args=(stream, name), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    @property
    def pid(self) -> int | None:
        """Process ID of the child (``None`` before :meth:`start`)."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """True while the child is alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status once the child has ended, else ``None``."""
        return None if self._process is None else self._process.poll()

    @property
    def finished(self) -> bool:
        """True when the child has ended and all of its output has been read."""
        return self.returncode is not None and not any(t.is_alive() for t in self._threads)

    @property
    def succeeded(self) -> bool:
        """True when the run ended normally with exit status 0."""
        return self.finished and self.returncode == 0 and not self.cancelled

    def error(self) -> str | None:
        """One readable line explaining a failure; ``None`` while running or after success."""
        if not self.finished or self.succeeded:
            return None
        if self.cancelled:
            return "cancelled by the user"
        return error_line(self.stderr_lines, self.returncode)

    # ------------------------------------------------------------------ output
    def _read(self, stream: IO[str], name: str) -> None:
        for raw in stream:
            line = raw.rstrip("\r\n")
            event = (parse_progress(line) or parse_log_line(line)) if name == "stdout" else None
            if event is None and name == "stderr":
                self.stderr_lines.append(line)
            if isinstance(event, LogLine) and event.stream == "warning":
                self.warnings.append(event.text)
            self._events.put(event if event is not None else LogLine(name, line))
        stream.close()

    def poll(self) -> list[Event]:
        """Everything the child reported since the last call (never blocks)."""
        events: list[Event] = []
        while True:
            try:
                event = self._events.get_nowait()
            except queue.Empty:
                break
            if isinstance(event, ProgressEvent):
                self.last_progress = event
            events.append(event)
        return events

    def elapsed(self) -> float:
        """Seconds since :meth:`start`."""
        return time.monotonic() - self.started_at

    def seconds_left(self) -> float | None:
        """Estimate of the time left from the last progress fraction, ``None`` if not known yet."""
        done = None if self.last_progress is None else self.last_progress.overall
        if done is None or not 0.0 < done < 1.0:
            return None
        return self.elapsed() * (1.0 - done) / done

    def status_line(self) -> str:
        """``"stage: message (about N s left)"`` from the last progress event."""
        if self.last_progress is None:
            return "Starting..."
        left = self.seconds_left()
        eta = f" (about {left:.0f} s left)" if left is not None else ""
        return f"{self.last_progress.stage}: {self.last_progress.message}{eta}"

    def wait(self, timeout: float | None = None) -> int:
        """Block until the child ends and its output is read; returns the exit status."""
        assert self._process is not None, "start() first"
        returncode = self._process.wait(timeout)
        for thread in self._threads:
            thread.join(timeout)
        return returncode

    # ------------------------------------------------------------------ cancel
    def cancel(self, grace_seconds: float = 3.0) -> None:
        """Kill the child and every process it started; safe to call at any time."""
        if not self.running:
            return
        self.cancelled = True
        assert self._process is not None
        if sys.platform == "win32":
            subprocess.run(
                ["taskkill", "/F", "/T", "/PID", str(self._process.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
            )
        else:
            self._signal_group(signal.SIGTERM)
            try:
                self._process.wait(grace_seconds)
            except subprocess.TimeoutExpired:
                pass
            self._signal_group(signal.SIGKILL)  # also reaches grandchildren that ignored SIGTERM
        self._process.wait()

    def _signal_group(self, sig: int) -> None:
        assert self._process is not None
        try:
            os.killpg(self._process.pid, sig)  # the child leads its own session (start_new_session)
        except ProcessLookupError:
            pass


class CommandSequence:
    """Command lines run one after the other in background processes (installs, model imports); poll it
    from a timer. Stops at the first failure, whose one-line reason :meth:`error` gives."""

    def __init__(self, commands: Sequence[Sequence[str]]) -> None:
        self.commands = [list(c) for c in commands]
        self.done = 0
        self._run: BackgroundRun | None = None
        self._error: str | None = None
        self.cancelled = False

    def start(self) -> CommandSequence:
        self._next()
        return self

    def _next(self) -> None:
        if self.done < len(self.commands):
            environment = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
            self._run = BackgroundRun(self.commands[self.done], env=environment)
            self._run.start()
        else:
            self._run = None

    @property
    def finished(self) -> bool:
        return self._run is None

    def fraction(self) -> float:
        return self.done / max(1, len(self.commands))

    def status_line(self) -> str:
        if self._run is None:
            return "Finished." if not self._error else f"Failed: {self._error}"
        return f"Step {self.done + 1}/{len(self.commands)}: {' '.join(self.commands[self.done][1:5])}..."

    def poll(self) -> list[str]:
        """New output lines; starts the next command when one ends."""
        if self._run is None:
            return []
        lines = [e.text for e in self._run.poll() if isinstance(e, LogLine)]
        if self._run.finished:
            lines += [e.text for e in self._run.poll() if isinstance(e, LogLine)]  # read after the end
            if self._run.succeeded:
                self.done += 1
                self._next()
            else:
                self._error = "cancelled" if self._run.cancelled else self._run.error()
                self._run = None
            importlib.invalidate_caches()  # an install may have added packages
        return lines

    def error(self) -> str | None:
        return self._error

    def cancel(self) -> None:
        if self._run is not None:
            self._run.cancel()
