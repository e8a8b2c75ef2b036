"""Post-processing: back to the input grid and threshold, the side rule, one piece, islands and holes.

- ``to_input_grid.py``: model-space probabilities -> a thresholded mask on the input grid
- ``side.py``: a left (right) organ kept on the left (right) of the body's midline
- ``components.py``: small islands, largest component, holes
- ``options.py``: :class:`PostprocessOptions`, and which of them apply to a target
"""

from .components import apply
from .options import PostprocessOptions
from .side import SIDE_TOLERANCE_MM, keep_to_side
from .to_input_grid import TargetMaskCrop, from_model_space, probabilities_to_mask, reference_geometry

__all__ = [
    "PostprocessOptions", "SIDE_TOLERANCE_MM", "TargetMaskCrop", "apply", "from_model_space", "keep_to_side",
    "probabilities_to_mask", "reference_geometry",
]
