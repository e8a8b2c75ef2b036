"""``clip_zscore``: clip to fixed bounds, then z-score per volume (CT in Hounsfield units)."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from .base import Normalization, clip_and_zscore, pair


class ClipZScore(Normalization):
    """Clip to ``clip`` = [lo, hi], then z-score. Hermes-R's CT: [-991, 500] HU (upstream preprocessing)."""

    method = "clip_zscore"
    parameters = ("clip",)

    def __init__(self, entry: Mapping[str, Any]) -> None:
        super().__init__(entry)
        self.lo, self.hi = pair(entry, "clip", self.method)

    def __call__(self, array: np.ndarray) -> None:
        clip_and_zscore(array, self.lo, self.hi)
