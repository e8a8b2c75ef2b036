"""``percentile_clip_zscore``: clip to the volume's own percentiles, then z-score (MR and PET)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .base import Normalization, clip_and_zscore, pair


class PercentileClipZScore(Normalization):
    """Clip to the volume's ``percentiles`` = [p_lo, p_hi] (0-100), then z-score. Hermes-R's MR and
    PET: the 2nd and 98th percentiles (upstream preprocessing)."""

    method = "percentile_clip_zscore"
    parameters = ("percentiles",)

    def __init__(self, entry: Mapping[str, Any]) -> None:
        super().__init__(entry)
        self.percentiles = pair(entry, "percentiles", self.method)

    def __call__(self, array: np.ndarray) -> None:
        lo, hi = (float(v) for v in np.percentile(array, self.percentiles))
        clip_and_zscore(array, lo, hi)
