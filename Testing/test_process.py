"""BackgroundRun with a tiny fake engine as the child (no Slicer, no model needed)."""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time
from pathlib import Path

import pytest

from HermesSegmentLib.pipeline import SegmentOptions
from HermesSegmentLib.postprocess import PostprocessOptions
from HermesSegmentLib.slicer.background import (
    BackgroundRun,
    LogLine,
    ProgressEvent,
    error_line,
    parse_progress,
    segment_command,
)

FAKE_ENGINE = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    mode, workdir = sys.argv[1], sys.argv[2]
    print("loading model", flush=True)
    for i, stage in enumerate(["load", "infer", "write"]):
        print(json.dumps({"stage": stage, "fraction": (i + 1) / 3, "message": stage + " done"}), flush=True)
    if mode == "fail":
        print("Traceback noise", file=sys.stderr)
        print("error: 'brain' is not offered by model 'demo' for CT; see hermes-segment models info", file=sys.stderr)
        sys.exit(2)
    if mode == "hang":
        # a grandchild that ignores SIGTERM, like a stuck worker
        code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
        worker = subprocess.Popen([sys.executable, "-c", code])
        with open(os.path.join(workdir, "worker.pid"), "w") as f:
            f.write(str(worker.pid))
        time.sleep(600)
    open(os.path.join(workdir, "case.seg.nrrd"), "w").write("ok")
    """
)


@pytest.fixture()
def engine(tmp_path: Path) -> Path:
    path = tmp_path / "fake_engine.py"
    path.write_text(FAKE_ENGINE)
    return path


def _run(engine: Path, mode: str, workdir: Path) -> BackgroundRun:
    return BackgroundRun([sys.executable, str(engine), mode, str(workdir)]).start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not yet reaped by its re-parented init) counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_progress_streams_and_success(engine, tmp_path):
    run = _run(engine, "ok", tmp_path)
    assert run.wait(60) == 0
    events = run.poll()
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    assert [e.stage for e in progress] == ["load", "infer", "write"]
    assert progress[-1].fraction == pytest.approx(1.0)
    assert LogLine("stdout", "loading model") in events
    assert run.succeeded and run.error() is None
    assert (tmp_path / "case.seg.nrrd").read_text() == "ok"
    assert run.poll() == []


def test_error_reaches_the_user_as_one_line(engine, tmp_path):
    run = _run(engine, "fail", tmp_path)
    assert run.wait(60) == 2
    run.poll()
    assert not run.succeeded
    assert run.error() == "'brain' is not offered by model 'demo' for CT; see hermes-segment models info"


@pytest.mark.skipif(sys.platform == "win32", reason="process-tree check uses POSIX signals")
def test_cancel_kills_the_whole_process_tree(engine, tmp_path):
    run = _run(engine, "hang", tmp_path)
    pid_file = tmp_path / "worker.pid"
    deadline = time.monotonic() + 30
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "fake engine did not start its worker"
        time.sleep(0.05)
    worker = int(pid_file.read_text())
    assert _alive(worker)
    run.cancel(grace_seconds=0.5)
    assert not run.running
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(worker)
    run.wait(10)
    assert run.error() == "cancelled by the user"
    assert not (tmp_path / "case.seg.nrrd").exists()


def test_seconds_left_from_progress(engine, tmp_path):
    run = _run(engine, "ok", tmp_path)
    assert run.seconds_left() is None
    run.wait(60)
    run.poll()
    assert run.seconds_left() is None  # finished: fraction 1.0
    run.last_progress = ProgressEvent("infer", 0.25)
    assert run.seconds_left() == pytest.approx(3 * (time.monotonic() - run.started_at), rel=0.1, abs=0.05)


def test_parsing_helpers():
    assert parse_progress(json.dumps({"stage": "infer", "fraction": 0.5, "message": "window 3/6"})) == ProgressEvent(
        "infer", 0.5, "window 3/6"
    )
    assert parse_progress("plain text") is None
    assert parse_progress('{"no": "stage"}') is None
    assert error_line(["x", "error: bad input; do Y", "tail"], 2) == "bad input; do Y"
    assert error_line(["Traceback", "RuntimeError: CUDA out of memory", ""], 1) == "RuntimeError: CUDA out of memory"
    assert "exit status 9" in error_line([], 9)
    options = SegmentOptions(fast=True, postprocess=PostprocessOptions(min_island_ml=0.5))
    command = segment_command("in.nrrd", "out", modality="CT", targets=["liver", "spleen"], options=options,
                              python="py")
    assert command[:4] == ["py", "-m", "HermesSegmentLib.cli", "segment"]
    assert command[command.index("--targets") + 1] == "liver,spleen"
    assert "--progress-json" in command and "--fast" in command and "--keep-largest" not in command
    assert command[command.index("--min-island-ml") + 1] == "0.5"
    assert "--precision" not in command and "--no-side-constraint" not in command  # the engine's defaults
    assert "--no-single-piece" not in command
    from HermesSegmentLib.cli import build_parser
    from HermesSegmentLib.pipeline.options import PRESETS, from_args

    for preset in PRESETS.values():  # the engine gets exactly the options the Slicer module sends
        options = SegmentOptions(model="my-model", device="cpu", postprocess=PostprocessOptions(
            side_constraint=False, single_piece=False, keep_largest=True, fill_holes=True, min_island_ml=2.0),
            crop_to_body=False, batch_size=1, threshold=0.4, **preset)
        sent = segment_command("in.nrrd", "out", modality="CT", targets=["liver"], options=options)
        parsed = build_parser().parse_args(sent[3:])
        assert parsed.no_side_constraint and parsed.no_single_piece and parsed.targets == "liver"
        assert from_args(parsed) == options
