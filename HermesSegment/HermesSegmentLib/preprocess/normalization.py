"""Intensity normalisation as the model manifest names it: clip, then z-score per volume."""

from __future__ import annotations

import math

import numpy as np

from ..errors import HermesError


def check_normalization(normalization: dict) -> None:
    method = normalization.get("method")
    if method == "clip_zscore" and len(normalization.get("clip", ())) == 2:
        return
    if method == "percentile_clip_zscore" and len(normalization.get("percentiles", ())) == 2:
        return
    raise HermesError(f"unsupported normalization {normalization!r} in the model manifest; "
                      "use clip_zscore with clip [lo, hi] or percentile_clip_zscore with percentiles")


def normalize_inplace(array: np.ndarray, normalization: dict) -> None:
    """Clip then z-score ``array`` (float32) in place; statistics in float64 accumulators."""
    if normalization["method"] == "clip_zscore":
        lo, hi = (float(v) for v in normalization["clip"])
    else:
        lo, hi = (float(v) for v in np.percentile(array, normalization["percentiles"]))
    np.clip(array, lo, hi, out=array)
    total = total_sq = 0.0
    for z in range(array.shape[0]):  # per slice: no volume-sized float64 temporary
        sl = array[z].astype(np.float64)
        total += float(sl.sum())
        total_sq += float(np.dot(sl.ravel(), sl.ravel()))
    n = array.size
    mean = total / n
    std = math.sqrt(max(total_sq / n - mean * mean, 0.0))
    array -= np.float32(mean)
    # A constant volume has std 0: leave it centred at 0 rather than dividing by zero.
    if std > 1e-6:
        array /= np.float32(std)
