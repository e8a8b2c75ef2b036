"""The files of one segmented case, as `hermes-segment segment` and the server both write them.

``<name><format suffix>`` (plus what the format adds: a NIfTI sidecar, one file per target) and,
when asked, ``<name>_probabilities_<target>_prob.nii.gz``; the case's rows for ``summary.csv``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import SegmentationWriter


def write_case(folder: Path, name: str, result: Any, writer: SegmentationWriter, *, overlap_policy: str = "priority",
               probabilities: bool = False) -> Path:
    """Write a ``SegmentationResult`` into ``folder``; returns the main output ``<name><writer.suffix>``.

    ``probabilities`` needs a result segmented with ``keep_probabilities=True``.
    """
    from . import write_probability_maps  # looked up in the package at each call (tests replace it there)

    destination = folder / f"{name}{writer.suffix}"
    writer.write(destination, result.masks, result.reference, overlap_policy=overlap_policy)
    if probabilities:
        write_probability_maps(folder / f"{name}_probabilities", result.probability_maps(), result.reference)
    return destination


def summary_rows(name: str, result: Any) -> list[dict[str, Any]]:
    """The case's rows of ``summary.csv``, less the seconds: one per target, voxels and mL on the input grid."""
    spacing = result.reference.GetSpacing()
    return [{"case": name, "target": mask.key, "voxels": mask.voxels, "volume_ml": round(mask.volume_ml(spacing), 3)}
            for mask in result.masks]
