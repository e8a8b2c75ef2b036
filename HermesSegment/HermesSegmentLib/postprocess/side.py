"""The side rule: one of a pair of organs is kept on its side of the body's midline (in model space)."""

from __future__ import annotations

import numpy as np

# How far a left organ may reach across the midline (and a right one): the lungs meet at the
# anterior junction line, and the midline is estimated from the body's outline.
SIDE_TOLERANCE_MM = 15.0


def keep_to_side(probabilities: np.ndarray, side: str, midline_x: float, offset_x: int, spacing_x: float,
                 tolerance_mm: float = SIDE_TOLERANCE_MM) -> None:
    """Zero, in place, the model-space ``probabilities`` ([z, y, x], x toward the patient's left,
    the crop's first x being ``offset_x`` of the full grid) that lie more than ``tolerance_mm``
    across the midline (x index ``midline_x``) from ``side`` (``"left"`` or ``"right"``)."""
    x = np.arange(probabilities.shape[2]) + offset_x
    reach = tolerance_mm / spacing_x
    wrong = x < midline_x - reach if side == "left" else x > midline_x + reach
    probabilities[..., wrong] = 0
