"""Writers: results to files on the input grid (Slicer .seg.nrrd, NIfTI label maps, probabilities, summary.csv).

Every file is written to a temporary name in its destination folder and moved into place
(:mod:`HermesSegmentLib.atomic`): if anything fails, no partial output exists under the final name,
and files that belong together (a label map and its JSON sidecar) are all written before any is
moved into place.

How to add an output format: a subclass of :class:`SegmentationWriter` in a new file of this folder,
and one line in :data:`FORMATS` below; ``hermes-segment segment --format`` offers it from there.
"""

from ..errors import HermesError
from .base import MARK, SegmentationWriter
from .nifti import NiftiLabelMapWriter, write_label_map_nifti
from .probabilities import probability_map_name, write_probability_maps
from .seg_nrrd import SegNrrdWriter, read_seg_nrrd, write_seg_nrrd
from .summary_csv import SUMMARY_COLUMNS, check_summary, write_summary_rows

#: ``--format`` name -> writer.
FORMATS: dict[str, SegmentationWriter] = {
    SegNrrdWriter.name: SegNrrdWriter(),
    NiftiLabelMapWriter.name: NiftiLabelMapWriter(),
}

__all__ = [
    "FORMATS", "MARK", "SUMMARY_COLUMNS", "SegmentationWriter", "check_overlap_policy", "check_summary",
    "probability_map_name", "read_seg_nrrd", "write_label_map_nifti", "write_probability_maps", "write_seg_nrrd",
    "write_summary_rows",
]


def check_overlap_policy(format_name: str, overlap_policy: str) -> None:
    """:class:`HermesError` when ``overlap_policy`` asks ``format_name`` for what it does not do: one file per
    target is a NIfTI label-map choice (a .seg.nrrd holds overlapping targets as they are)."""
    if overlap_policy == "per_target" and format_name != "nifti":
        raise HermesError(f"--overlap-policy per_target is for --format nifti; {format_name} keeps overlapping "
                          "targets as they are")
