"""`torchrun ... -m HermesSegmentLib.cli segment`: cases split over ranks, the same outputs as one process.

Two CPU processes (gloo) on a folder of phantom crops: every case is segmented exactly once, by
one rank; the files equal those of a single-process run; summary.csv is merged once, at the end;
a second run skips everything (resumable).
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from HermesSegmentLib.cli import main as cli_main
from HermesSegmentLib.writers import read_seg_nrrd
from serving import REPO, phantom_crops

pytestmark = pytest.mark.slow
OPTIONS = ["--modality", "CT", "--targets", "all", "--precision", "float32", "--device", "cpu"]


def torchrun_segment(inputs: Path, out: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO / "HermesSegment"), os.environ.get("PYTHONPATH")) if p))
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "HermesSegmentLib.cli", "segment", str(inputs), "--out", str(out), *OPTIONS, "--progress-json"],
        capture_output=True, text=True, env=env, timeout=900)


def messages(run: subprocess.CompletedProcess) -> list[str]:
    """The log lines of all ranks (JSON lines on stdout: one write each, so never interleaved)."""
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return [line["message"] for line in lines if "message" in line]


def summary_rows(path: Path) -> list[tuple[str, str, str]]:
    with open(path, newline="", encoding="utf-8") as stream:
        return sorted((row["case"], row["target"], row["voxels"]) for row in csv.DictReader(stream))


def test_two_ranks_split_the_cases_and_give_the_single_process_outputs(tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    for path in phantom_crops(tmp_path / "phantom", 5):
        path.rename(cases / path.name)
    names = sorted(p.name[: -len(".nii.gz")] for p in cases.iterdir())

    assert cli_main(["segment", str(cases), "--out", str(tmp_path / "single"), *OPTIONS]) == 0
    run = torchrun_segment(cases, tmp_path / "sharded")
    assert run.returncode == 0, run.stderr[-3000:]

    case_lines = [re.match(r"rank (\d)/2: (crop\d): \d+ targets", m) for m in messages(run)]
    done = [line.groups() for line in case_lines if line]
    assert sorted(case for _, case in done) == names, "every case exactly once"
    assert {rank for rank, _ in done} == {"0", "1"}, "both ranks worked"
    single_files = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == single_files
    for name in names:
        one, _ = read_seg_nrrd(tmp_path / "single" / f"{name}.seg.nrrd")
        two, _ = read_seg_nrrd(tmp_path / "sharded" / f"{name}.seg.nrrd")
        assert [m.key for m in one] == [m.key for m in two]
        assert all(a.offset_zyx == b.offset_zyx and np.array_equal(a.array, b.array) for a, b in zip(one, two))
    assert summary_rows(tmp_path / "sharded" / "summary.csv") == summary_rows(tmp_path / "single" / "summary.csv")

    stamps = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "sharded").iterdir()}
    again = torchrun_segment(cases, tmp_path / "sharded")
    assert again.returncode == 0
    assert sum("done earlier from this input" in m for m in messages(again)) == len(names)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "sharded").iterdir()} == stamps
