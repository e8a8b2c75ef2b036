"""The pipeline: segment_image(), the one function the CLI, the Slicer logic and the tests call."""

from .segment import FAST_OVERLAP, SegmentationResult, resolve_targets, segment_image

__all__ = ["FAST_OVERLAP", "SegmentationResult", "resolve_targets", "segment_image"]
