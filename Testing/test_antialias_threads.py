"""Anti-aliasing on every core gives the single-threaded result, bit for bit."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from HermesSegmentLib.preprocess import model_space


def test_threaded_antialiasing_equals_one_pass_per_axis(monkeypatch):
    monkeypatch.setattr(model_space, "_THREADS", 3)
    monkeypatch.setattr(model_space, "_SLAB", 5)  # several slabs, the last one short
    values = np.random.default_rng(0).normal(size=(23, 41, 37)).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((0.5, 0.6, 1.0))
    smoothed = sitk.GetArrayFromImage(model_space._antialias(image, np.array([2.0, 2.0, 2.0])))
    expected = values.copy()
    for axis_xyz, factor in enumerate((4.0, 2.0 / 0.6, 2.0)):
        ndimage.gaussian_filter1d(expected, (factor - 1) / 2, axis=2 - axis_xyz, output=expected, mode="nearest",
                                  truncate=3.0)
    np.testing.assert_array_equal(smoothed, expected)
