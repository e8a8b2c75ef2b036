"""Evaluation against ground truth: metrics, masks from files, case matching.

- ``metrics.py``: Dice, HD95 and surface Dice (MONAI's), per case and target; summaries; reference contours of
  unusual volume; the CSV
- ``mask_files.py``: a case's masks from a .seg.nrrd, a label map or per-target files; grid checks
- ``cases.py``: case names, the cases of a folder, predictions paired with ground truth
- ``partial_scans.py``: slab consistency (a partial scan gives the whole scan's masks inside it)

The names below are imported on first use (PEP 562): ``metrics.dice`` is what the trainer needs, and
a training machine fed prepared data may lack SimpleITK, which the file readers import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cases import CASE_SUFFIXES, case_name, find_cases, match_cases
    from .mask_files import MaskSet, check_same_grid, load_masks, read_label_table, target_key
    from .metrics import (
        METRIC_COLUMNS,
        dice,
        evaluate_case,
        evaluate_masks,
        summarize,
        unusual_references,
        write_metrics_csv,
    )
    from .partial_scans import phantom_slab_consistency, slab_consistency

_MODULE_OF = {
    **dict.fromkeys(("CASE_SUFFIXES", "case_name", "find_cases", "match_cases"), "cases"),
    **dict.fromkeys(("MaskSet", "check_same_grid", "load_masks", "read_label_table", "target_key"), "mask_files"),
    **dict.fromkeys(("METRIC_COLUMNS", "dice", "evaluate_case", "evaluate_masks", "summarize",
                     "unusual_references", "write_metrics_csv"), "metrics"),
    **dict.fromkeys(("phantom_slab_consistency", "slab_consistency"), "partial_scans"),
}

__all__ = [
    "CASE_SUFFIXES", "METRIC_COLUMNS", "MaskSet", "case_name", "check_same_grid", "dice", "evaluate_case",
    "evaluate_masks", "find_cases", "load_masks", "match_cases", "phantom_slab_consistency", "read_label_table",
    "slab_consistency", "summarize", "target_key", "unusual_references", "write_metrics_csv",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
