"""The pipeline: :func:`segment_image`, the one function the CLI, the Slicer logic and the tests call,
and :class:`SegmentOptions`, the one list of its options.

``segment_image`` and ``SegmentationResult`` are imported on first use (they pull in torch), so that
the options stay cheap to import for the command-line parser and the Slicer module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .options import DEFAULT_MODEL, PRESETS, SegmentOptions

if TYPE_CHECKING:
    from .segment import SegmentationResult, resolve_targets, segment_image

__all__ = ["DEFAULT_MODEL", "PRESETS", "SegmentOptions", "SegmentationResult", "resolve_targets", "segment_image"]


def __getattr__(name: str) -> Any:
    if name in ("SegmentationResult", "resolve_targets", "segment_image"):
        from . import segment

        return getattr(segment, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
