"""The base class of intensity normalisations: a manifest entry in, an array normalised in place."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar, Mapping

import numpy as np

from ...errors import HermesError


class Normalization(ABC):
    """One method of the manifest's ``modalities[].normalization``, named by :attr:`method`.

    ``entry``: the manifest entry, e.g. ``{"method": "clip_zscore", "clip": [-991, 500]}``; a
    subclass lists the keys it needs in :attr:`parameters` and reads them in ``__init__``.
    """

    method: ClassVar[str]
    parameters: ClassVar[tuple[str, ...]] = ()
    #: Whether the statistics come from the volume itself (then a partial scan is normalised
    #: differently from the whole; training re-normalises its slab crops to match, see
    #: ``training.sampling.renormalized``).
    per_volume: ClassVar[bool] = True

    def __init__(self, entry: Mapping[str, Any]) -> None:
        missing = [key for key in self.parameters if key not in entry]
        if missing:
            raise HermesError(f"normalization {self.method!r} in the model manifest lacks {', '.join(missing)}; "
                              "fix the manifest")
        self.entry = dict(entry)

    @abstractmethod
    def __call__(self, array: np.ndarray) -> None:
        """Normalise ``array`` (float32, [z, y, x], the whole model-space volume) in place."""


def clip_and_zscore(array: np.ndarray, lo: float, hi: float) -> None:
    """Clip ``array`` (float32) to [lo, hi], then z-score it, in place; statistics in float64.

    A constant volume (std 0) is only centred, not divided by zero.
    """
    np.clip(array, lo, hi, out=array)
    total = total_sq = 0.0
    for z in range(array.shape[0]):  # per slice: no volume-sized float64 temporary
        plane = array[z].astype(np.float64)
        total += float(plane.sum())
        total_sq += float(np.dot(plane.ravel(), plane.ravel()))
    n = array.size
    mean = total / n
    std = math.sqrt(max(total_sq / n - mean * mean, 0.0))
    array -= np.float32(mean)
    if std > 1e-6:
        array /= np.float32(std)


def pair(entry: Mapping[str, Any], key: str, method: str) -> tuple[float, float]:
    """``entry[key]`` as two floats, or a one-line :class:`HermesError`."""
    value = entry.get(key)
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise HermesError(f"normalization {method!r} needs {key} [lo, hi] in the model manifest, got {value!r}")
    return float(value[0]), float(value[1])
