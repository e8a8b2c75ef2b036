"""Window plans: the coverage subset covers every voxel with lattice windows; 'near' is exact."""

from __future__ import annotations

import numpy as np
import pytest

from HermesSegmentLib.inference.window_plan import corners_near, covering_corners, covering_starts
from HermesSegmentLib.inference.windows import axis_starts, window_starts


@pytest.mark.parametrize("size", [128, 129, 200, 274, 500])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.75])
def test_covering_starts_are_lattice_starts_without_gaps(size, overlap):
    starts = covering_starts(size, 128, overlap)
    assert set(starts) <= set(axis_starts(size, 128, overlap))
    covered = np.zeros(size, dtype=bool)
    for start in starts:
        covered[start:start + 128] = True
    assert covered.all()
    if overlap == 0.5:  # every other start of the lattice, and the last one
        lattice = axis_starts(size, 128, overlap)
        assert len(starts) <= len(lattice) // 2 + 1


def test_covering_corners_of_an_abdominal_crop():
    shape, window = (500, 274, 274), (128, 128, 128)
    cover = covering_corners(shape, window, 0.5)
    assert len(cover) == 4 * 3 * 3 and set(cover) <= set(window_starts(shape, window, 0.5))


def test_corners_near_takes_every_window_that_reaches_the_margin():
    shape, window = (40, 40, 40), (16, 16, 16)
    corners = window_starts(shape, window, 0.5)
    found = np.zeros(shape, dtype=bool)
    found[20, 20, 20] = True
    near = corners_near(found, corners, window, margin=2)
    expected = [c for c in corners if all(s - 2 <= 20 < s + 16 + 2 for s in c)]
    assert near == expected and 0 < len(near) < len(corners)
    assert corners_near(np.zeros(shape, dtype=bool), corners, window, margin=4) == []


class Blob:
    """A predictor whose one output is 10 x the window's values: a volume of +1 in a ball and -1
    elsewhere has its target exactly there."""

    def __call__(self, windows):
        return 10.0 * windows

    def to(self, device):
        return self


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_near_targets_runs_fewer_windows_and_gives_the_full_runs_probabilities(batch_size):
    from HermesSegmentLib.inference import WindowPlan, predict_volume

    z, y, x = np.ogrid[:90, :70, :110]
    volume = np.where((z - 60) ** 2 + (y - 20) ** 2 + (x - 80) ** 2 <= 64, 1.0, -1.0).astype(np.float32)
    full_plan, near_plan = WindowPlan(), WindowPlan(near_targets=0.125)
    full = predict_volume(Blob(), volume, window_zyx=(32, 32, 32), batch_size=batch_size, plan=full_plan)
    near = predict_volume(Blob(), volume, window_zyx=(32, 32, 32), batch_size=batch_size, plan=near_plan)
    np.testing.assert_array_equal(near, full)
    assert full_plan.windows == full_plan.lattice == len(window_starts(volume.shape, (32, 32, 32), 0.5))
    assert near_plan.lattice == full_plan.lattice and near_plan.windows < full_plan.windows / 2

    nothing = predict_volume(Blob(), -np.ones((90, 70, 110), np.float32), window_zyx=(32, 32, 32), plan=near_plan)
    assert nothing.shape == (1, 90, 70, 110) and not nothing.any()
    assert near_plan.windows == len(covering_corners((90, 70, 110), (32, 32, 32), 0.5))


@pytest.mark.parametrize("centres", [[10], [10, 180]], ids=["one target at the top", "two far apart in z"])
def test_near_targets_far_from_the_end_or_from_each_other_in_z(centres):
    """A target near one end of a long volume, or two targets far apart in z: whole stretches of
    z no window reaches, longer than a window (a bladder asked alone in a whole-body PET)."""
    from HermesSegmentLib.inference import WindowPlan, predict_volume

    z, y, x = np.ogrid[:200, :40, :40]
    inside = np.zeros((200, 40, 40), dtype=bool)
    for centre in centres:
        inside |= (z - centre) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 <= 36
    volume = np.where(inside, 1.0, -1.0).astype(np.float32)
    plan = WindowPlan(near_targets=0.125)
    full = predict_volume(Blob(), volume, window_zyx=(32, 32, 32), batch_size=2)
    near = predict_volume(Blob(), volume, window_zyx=(32, 32, 32), batch_size=2, plan=plan)
    assert plan.windows < plan.lattice
    np.testing.assert_array_equal(near[:, inside], full[:, inside])
    assert near[0, 100:150].max() == 0  # no window ran there


def test_batch_size_from_memory_per_window():
    import torch

    from HermesSegmentLib.inference import choose_batch_size, window_memory_gb

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    hermes_r = window_memory_gb((128, 128, 128), 32, None)
    assert hermes_r == pytest.approx(2.95) and window_memory_gb((128,) * 3, 32, torch.bfloat16) == pytest.approx(1.56)
    demo = window_memory_gb((48, 48, 48), 16, torch.bfloat16)
    assert choose_batch_size(cpu, hermes_r, 64.0) == 1  # large model on the CPU: one window, half the memory
    assert choose_batch_size(cpu, demo, 8.0) == 2 and choose_batch_size(cpu, 1.5 * demo, 4 * demo) == 1
    assert choose_batch_size(cuda, 1.56, 139.0) == 8 and choose_batch_size(cuda, 1.56, 6.0) == 2
    assert choose_batch_size(cuda, 1.56, 2.0) == 1 and choose_batch_size(cuda, 1.56, None) == 2
