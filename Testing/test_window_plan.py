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
