"""``clip_fixed_zscore``: clip to fixed bounds, then z-score with fixed statistics (CT).

A per-volume z-score makes the same tissue a different number in every scan: in a head-and-neck
CT whose field of view is 97 % air the volume's mean is -915 HU and soft tissue lands at +3.6,
in an abdominal CT (mean about -560 HU) at +1.2, and a slab or a tight field of view moves it
again (docs/experiments.md, section 7). Hounsfield units already are a fixed scale, so a CT model
can take fixed statistics, as nnU-Net's CT normalisation does with its dataset-wide foreground
mean and standard deviation: what the network sees then does not depend on what else the scan
holds.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ...errors import HermesError
from .base import Normalization, pair


class ClipFixedZScore(Normalization):
    """Clip to ``clip`` = [lo, hi], subtract ``mean`` and divide by ``std`` (numbers from the
    manifest, not from the volume)."""

    method = "clip_fixed_zscore"
    parameters = ("clip", "mean", "std")
    per_volume = False

    def __init__(self, entry: Mapping[str, Any]) -> None:
        super().__init__(entry)
        self.lo, self.hi = pair(entry, "clip", self.method)
        self.mean, self.std = float(entry["mean"]), float(entry["std"])
        if not self.std > 0:
            raise HermesError(f"normalization {self.method!r} needs std > 0 in the model manifest, got {self.std}")

    def __call__(self, array: np.ndarray) -> None:
        np.clip(array, self.lo, self.hi, out=array)
        array -= np.float32(self.mean)
        array /= np.float32(self.std)
