"""HermesSegment core: universal medical image segmentation with the Hermes model.

Importable without Slicer and without Qt. The folders follow the data path (docs/architecture.md)::

    read (files, DICOM series)
      -> preprocess (model space: reorient, resample, body crop, normalise)
      -> inference (sliding window over the network)
      -> postprocess (back to the input grid, threshold, per-target cleanup)
      -> writers (.seg.nrrd, NIfTI, CSV) or slicer (segmentation node)

Heavy dependencies (torch, SimpleITK) are imported by the submodules that need them, so that
``import HermesSegmentLib`` stays cheap inside Slicer.
"""

from .errors import CancelledError, HermesError

__version__ = "0.1.0"

__all__ = ["CancelledError", "HermesError", "__version__"]

