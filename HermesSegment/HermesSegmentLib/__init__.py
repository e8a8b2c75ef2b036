"""HermesSegment core: universal medical image segmentation with the Hermes model.

Importable without Slicer and without Qt. The data path is one straight line::

    imaging (read, reorient, resample, normalise)
      -> inference (sliding window over the network)
      -> postprocess (threshold, per-target cleanup)
      -> outputs (.seg.nrrd, NIfTI, CSV) or slicer_logic (segmentation node)

Heavy dependencies (torch, SimpleITK) are imported by the submodules that need them, so that
``import HermesSegmentLib`` stays cheap inside Slicer.
"""

from .errors import CancelledError, HermesError

__version__ = "0.1.0"

__all__ = ["CancelledError", "HermesError", "__version__"]


def __getattr__(name: str):
    """Lazy attributes: ``HermesSegmentLogic`` imports Slicer's MRML only when asked for."""
    if name == "HermesSegmentLogic":
        from .slicer_logic import HermesSegmentLogic

        return HermesSegmentLogic
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
