"""Post-processing options and which of them apply to a target (one-piece organs keep their largest part)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

from .. import vocabulary


@dataclass
class PostprocessOptions:
    """Per-target cleanup, part of :class:`~HermesSegmentLib.pipeline.SegmentOptions`.

    ``side_constraint``: keep a left (right) organ on the left (right) of the body's midline;
    skipped where the midline is unknown (``ModelSpaceImage.midline_x``). ``single_piece``: keep
    the largest component of targets the vocabulary marks as one piece (see :meth:`for_target`).
    ``keep_largest``: keep the largest 26-connected component of every target. ``fill_holes``:
    fill cavities enclosed in 3D. ``min_island_ml``: drop components smaller than this volume in
    mL (None: keep all). The last three run on the input grid, after mapping back (``active``).
    """

    side_constraint: bool = field(default=True, metadata={
        "help": "do not keep left/right organs on their side of the body's midline"})
    single_piece: bool = field(default=True, metadata={
        "help": "do not reduce compact organs (liver, a kidney, a lung, ...) to their largest part"})
    keep_largest: bool = field(default=False, metadata={
        "help": "keep only the largest connected component of every target (tubes and lesions too)"})
    fill_holes: bool = field(default=False, metadata={"help": "fill enclosed holes in each target"})
    min_island_ml: Optional[float] = field(default=None, metadata={
        "type": float, "help": "remove islands smaller than this many mL"})

    @property
    def active(self) -> bool:
        """Whether any cleanup on the input grid is on (largest component, holes, islands)."""
        return self.keep_largest or self.fill_holes or bool(self.min_island_ml)

    def for_target(self, target: str) -> PostprocessOptions:
        """The options that apply to ``target`` (a vocabulary key): ``keep_largest`` turned on for
        a one-piece organ when ``single_piece`` is set."""
        if self.single_piece and not self.keep_largest and vocabulary.target(target).single_piece:
            return replace(self, keep_largest=True)
        return self
