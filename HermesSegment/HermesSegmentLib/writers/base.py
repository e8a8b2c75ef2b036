"""The base class of output formats: what ``hermes-segment segment --format NAME`` writes for a case."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Sequence

import SimpleITK as sitk

from ..mask import TargetMask

#: The mark of the files this tool writes: images carry ``ITK_FileNotes`` = ``"hermes-segment <what>"``
#: (NIfTI ``descrip``, an NRRD/MHA field), JSON files ``"written_by": "hermes-segment"``. ``batch``
#: reads it, so that an output is never taken for an input nor a user's file for an output.
MARK = "hermes-segment"


class SegmentationWriter(ABC):
    """One output format: ``name`` (the ``--format`` value), ``suffix`` (the file ending of a case's
    output, ``<case><suffix>``) and ``description`` (a few words for ``--help``)."""

    name: ClassVar[str]
    suffix: ClassVar[str]
    description: ClassVar[str]

    @abstractmethod
    def write(self, path: Path, masks: Sequence[TargetMask], reference: sitk.Image, *,
              overlap_policy: str = "priority") -> None:
        """Write ``masks`` (on ``reference``'s grid) to ``path`` atomically: a temporary file, then a
        rename. ``overlap_policy`` tells a format that cannot hold overlapping targets what to do
        (``"priority"``: later targets win; ``"per_target"``: one file per target)."""

    def file_names(self, stem: str, targets: Sequence[str], *, overlap_policy: str = "priority") -> list[str]:
        """The names of the files :meth:`write` makes for ``<stem><suffix>`` and these targets."""
        return [f"{stem}{self.suffix}"]
