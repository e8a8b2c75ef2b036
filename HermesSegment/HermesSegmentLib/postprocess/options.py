"""Post-processing options, per target: side rule, one piece, islands, largest component, holes."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

from .. import vocabulary


@dataclass
class PostprocessOptions:
    """``keep_largest``: keep the largest 26-connected component only.
    ``fill_holes``: fill cavities enclosed in 3D. ``min_island_ml``: drop components smaller
    than this volume in mL (None: keep all). ``active``: whether any of these three is on (they
    run on the input grid, after mapping back).
    ``side_constraint``: keep a left (right) organ on the left (right) of the body's midline;
    skipped where the midline is unknown (imaging.ModelSpaceImage.midline_x).
    ``single_piece``: keep the largest component of targets the vocabulary marks as one piece
    (see :meth:`for_target`)."""

    keep_largest: bool = False
    fill_holes: bool = False
    min_island_ml: Optional[float] = None
    side_constraint: bool = True
    single_piece: bool = True

    @property
    def active(self) -> bool:
        return self.keep_largest or self.fill_holes or bool(self.min_island_ml)

    def for_target(self, target: str) -> "PostprocessOptions":
        """The options that apply to ``target`` (a vocabulary key): ``keep_largest`` turned on for
        a one-piece organ when ``single_piece`` is set."""
        if self.single_piece and not self.keep_largest and vocabulary.target(target).single_piece:
            return replace(self, keep_largest=True)
        return self
