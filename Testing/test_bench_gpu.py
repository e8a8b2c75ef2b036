"""The GPU benchmark (benchmarks/bench_gpu.py) runs, so it cannot rot before a GPU is lent to us.

The smoke run takes the very code path of a GPU run (device ``auto``: CUDA when present) with a tiny
network and a small CT; the pure parts (stage parsing, memory prediction, order of the grid) are
checked on made-up inputs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_gpu

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_smoke_run_measures_every_part(tmp_path):
    appended = tmp_path / "benchmarks.md"
    appended.write_text("# Benchmarks\n", encoding="utf-8")
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_gpu.py"), "--smoke", "--budget", "400",
                          "--out", str(tmp_path), "--append", str(appended)],
                         check=False, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    data = json.loads((tmp_path / "bench_gpu.json").read_text(encoding="utf-8"))
    assert data["errors"] == [], data["errors"]
    assert data["reference"] == {"tensors": 405, "parameters": 60_884_998, "matches_reference": True}
    assert data["environment"]["torch"] == torch.__version__
    measured = [row for row in data["network"] if "ms_per_window_median" in row]
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert data["environment"]["device"].startswith(expected_device)
    assert {(row["precision"], row["batch"]) for row in measured} >= {("float32", 1), ("float32", 2)}
    assert all(0 < row["ms_per_window_min"] <= row["ms_per_window_median"] and row["finite"] for row in measured)
    assert data["volume"]["windows"] >= 1
    cli = data["cli"]
    assert cli["returncode"] == 0 and cli["startup"] > 0
    for case in ("ct_a", "ct_b"):
        stages = cli["cases"][case]
        parts = ["read", "to_model_space", "inference", "back_to_grid", "write"]
        assert all(stages[p] >= 0 for p in parts)
        assert stages["total"] == pytest.approx(sum(stages[p] for p in parts))
        assert stages["windows"] == data["volume"]["windows"]
    assert set(cli["mask_voxels"]) == set(bench_gpu.TARGETS)
    oracle = data["oracle"]
    assert all(oracle[p] >= 0 for p in ("read", "to_model_space", "back_to_grid", "write"))
    assert all(oracle["mask_voxels"][target] > 0 for target in bench_gpu.TARGETS)  # the phantom's organs came back
    table = (tmp_path / "bench_gpu.md").read_text(encoding="utf-8")
    assert "| precision | batch | variant |" in table and "| write .seg.nrrd |" in table
    assert appended.read_text(encoding="utf-8") == "# Benchmarks\n\n" + table


def test_cli_stages_from_progress_lines():
    events: list[tuple[float, dict[str, Any]]] = [
        (3.0, {"message": "model on CPU: 2 case(s)"}),
        (3.5, {"case": "a", "stage": "preprocess", "fraction": 0.0, "message": "resampling"}),
        (4.5, {"case": "a", "stage": "preprocess", "fraction": 1.0, "message": "model space"}),
        (4.6, {"case": "a", "stage": "inference", "fraction": 0.0, "message": "12 windows"}),
        (9.0, {"case": "a", "stage": "inference", "fraction": 1.0, "message": "window 12/12"}),
        (9.5, {"case": "a", "stage": "postprocess", "fraction": 0.0, "message": "liver"}),
        (11.0, {"case": "a", "stage": "postprocess", "fraction": 1.0, "message": "done"}),
        (12.0, {"message": "a: 1 targets in 8.9 s -> out/a.seg.nrrd"}),
        (12.2, {"case": "b", "stage": "preprocess", "fraction": 0.0, "message": "resampling"}),
        (13.0, {"case": "b", "stage": "preprocess", "fraction": 1.0, "message": "model space"}),
    ]
    stages = bench_gpu.cli_stages(events, ["a", "b"])
    assert stages["startup"] == 3.0
    a = stages["cases"]["a"]
    assert a == pytest.approx({"read": 0.5, "to_model_space": 1.0, "inference": 5.0, "back_to_grid": 1.5, "write": 1.0,
                               "total": 9.0, "windows": 12, "cli_reported_s": 8.9})
    assert stages["cases"]["b"] == pytest.approx({"read": 0.2, "to_model_space": 0.8})  # cut short: what it reached


def test_memory_prediction_grows_with_the_batch_from_the_largest_measured():
    rows = [{"precision": "bfloat16", "batch": 1, "variant": "default", "peak_gb": 3.0},
            {"precision": "bfloat16", "batch": 2, "variant": "default", "peak_gb": 5.0},
            {"precision": "bfloat16", "batch": 2, "variant": "channels-last", "peak_gb": 50.0}]
    predicted = bench_gpu.predicted_peak_gb(rows, "bfloat16", 8, weights_gb=1.0, window=128)
    assert predicted == pytest.approx(1 + 1.15 * 2 * 8)
    guess = bench_gpu.predicted_peak_gb(rows, "float32", 8, weights_gb=1.0, window=128)
    assert guess == pytest.approx(1 + 1.15 * bench_gpu.GUESS_GB_PER_WINDOW["float32"] * 8)


def test_grid_starts_with_the_engines_default():
    order = bench_gpu.grid(bench_gpu.FULL, torch.device("cuda"), "bfloat16", 8)
    assert order[0] == ("bfloat16", 8, "default")
    assert len(order) == len(set(order)) == 3 * 4 + 2  # every precision x batch, and two variants
    cpu = bench_gpu.grid(bench_gpu.SMOKE, torch.device("cpu"), "float32", 2)
    assert cpu[0] == ("float32", 2, "default") and all(p != "float16" for p, _, _ in cpu)
