"""The CPU benchmark (benchmarks/bench_inference.py, `make bench`) runs, section by section, on tiny inputs.

Times are not checked (no timed assertions); what must hold whatever the machine is: every
configuration ran three times, and the results the tables call equal are equal.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_inference as bench
from phantom_ct import ct_phantom


@pytest.fixture(scope="module")
def small_ct():
    return ct_phantom((48, 48, 20), (5.0, 5.0, 12.5), max_voxels=200_000)


@pytest.mark.slow
def test_engine_sections_compare_with_monai_and_every_window(small_ct):
    image, _, _ = small_ct
    lines, facts = bench.engine_sections(image, bench.load(bench.MODEL), reps=3)
    float32 = next(line for line in lines if line.startswith("| (c) ours, float32"))
    # MONAI's masks, but for float summation order: a voxel or two at the threshold
    differ = re.search(r"(\d+) voxels differ", float32)
    assert "= (bit for bit)" in float32 or (differ is not None and int(differ.group(1)) <= 5), float32
    windows = lines[next(n for n, line in enumerate(lines) if line.startswith("**2.")):]
    rows = [line for line in windows if line.startswith("| ") and not line.startswith("| asked")]
    assert len(rows) == 4 and all(row.endswith("| = (bit for bit) |") for row in rows), "\n".join(windows)
    assert facts["precision"] in ("float32", "bfloat16")


@pytest.mark.slow
def test_network_sections_time_torch_and_openvino_and_count_the_arithmetic(tiny_config):
    from HermesSegmentLib.network import HermesNetwork
    from HermesSegmentLib.network.predictor import HermesPredictor

    torch.manual_seed(0)
    predictor = HermesPredictor(HermesNetwork(tiny_config).eval(), [0, 1], 0, precision="float32")
    peak = bench.Peak(n=256)
    section = bench.network_sections("tiny", predictor, torch.randn(2, 1, 32, 32, 32), reps=3, calls=1, peak=peak)
    rows = bench.network_rows(section, peak)
    assert section["gflop"] > 0 and peak.best["float32"] > 0 and len(rows) == 2
    assert all(len(seconds) == 3 for seconds in section["timings"].seconds.values())
    assert rows[0].startswith("| tiny | torch |")
    if bench.openvino_backend.is_available():
        assert rows[1].startswith("| tiny | OpenVINO |") and "Dice of logit >= 0" in rows[1]
    else:
        assert "skipped: OpenVINO is not installed" in rows[1]


def test_input_grid_stages_give_the_previous_results_bit_for_bit(small_ct):
    image, labels, values = small_ct
    lines = bench.input_grid_section(image, labels, values, bench.load(bench.MODEL), reps=3)
    assert sum("= (bit for bit)" in line for line in lines) == 2, "\n".join(lines)


def test_hermes_r_windows_are_counted_on_the_lattice(small_ct):
    image, labels, values = small_ct
    counts = bench.hermes_r_windows(image, labels, values)
    assert all(0 < run <= lattice for run, lattice in counts.values())
    assert counts[bench.ONE_TARGET][0] <= counts["six abdominal organs"][0] <= counts["every target"][0]
