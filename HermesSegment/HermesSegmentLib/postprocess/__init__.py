"""Post-processing: back to the input grid and threshold, the side rule, one piece, islands and holes.

- ``to_input_grid.py``: model-space probabilities -> a thresholded mask on the input grid
- ``side.py``: a left (right) organ kept on the left (right) of the body's midline (model space)
- ``components.py``: small islands, largest component, holes (input grid)
- ``options.py``: :class:`PostprocessOptions`, and which of them apply to a target

Only the options are imported here, so that the option list (``pipeline.options``) stays cheap to
import; the functions are imported from their files.
"""

from .options import PostprocessOptions

__all__ = ["PostprocessOptions"]
