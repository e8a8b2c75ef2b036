"""Intensity normalisation, one class per method, chosen by the name in the model manifest.

How to add a method: write a subclass of :class:`Normalization` in a new file of this folder, add
it to :data:`NORMALIZATIONS` below, and add its entry to ``data/manifest.schema.json``
(``Testing/test_preprocess.py`` checks that the schema and this registry name the same methods).
"""

from __future__ import annotations

from typing import Any, Mapping

from ...errors import HermesError
from .base import Normalization
from .clip_fixed_zscore import ClipFixedZScore
from .clip_zscore import ClipZScore
from .percentile_clip_zscore import PercentileClipZScore

#: Manifest method name -> class.
NORMALIZATIONS: dict[str, type[Normalization]] = {
    ClipZScore.method: ClipZScore,
    PercentileClipZScore.method: PercentileClipZScore,
    ClipFixedZScore.method: ClipFixedZScore,
}


def normalization_for(entry: Mapping[str, Any]) -> Normalization:
    """The normalisation a manifest entry (``{"method": ..., parameters...}``) names; a one-line
    :class:`HermesError` for an unknown method or missing parameters."""
    method = entry.get("method") if isinstance(entry, Mapping) else None
    if method not in NORMALIZATIONS:
        raise HermesError(f"unsupported normalization {entry!r} in the model manifest; "
                          f"use one of: {', '.join(NORMALIZATIONS)}")
    return NORMALIZATIONS[method](entry)


__all__ = ["NORMALIZATIONS", "Normalization", "normalization_for"]
