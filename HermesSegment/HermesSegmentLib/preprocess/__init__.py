"""Preprocessing: the input image into model space (reorient, resample), body crop, normalisation.

- ``model_space.py``: :func:`to_model_space` and :class:`ModelSpaceImage`
- ``body.py``: the body's bounding box and sagittal midline
- ``normalization.py``: intensity normalisation named by the model manifest
- ``hounsfield.py``: CT in Hounsfield units, converted or refused when it is not
"""

from .hounsfield import to_hounsfield
from .model_space import ModelSpaceImage, to_model_space

__all__ = ["ModelSpaceImage", "to_hounsfield", "to_model_space"]
