"""The target vocabulary: modalities, regions, targets, terminology codes and colours.

The data lives in two files in ``HermesSegmentLib/data/``, and they are the one source of truth:

- ``data/vocabulary.json``: the modalities (with the Hermes-R modality slot of each), the regions
  used to group the GUI checklist, and one entry per anatomical target with its display name,
  synonyms, SNOMED CT codes as ``[codingScheme, codeValue, codeMeaning]`` triplets exactly as
  3D Slicer's terminology uses them, and its display colour.
- ``data/hermes_r_tasks.tsv``: the 71 tasks of the released Hermes-R weights (task index, source
  dataset, modalities, target key) and which task index serves each (modality, target) pair.

This package only reads and looks up; it imports nothing outside the standard library (no Qt,
Slicer or torch), so the CLI, the Slicer module and the tests share it.

Typical use::

    from HermesSegmentLib import vocabulary
    liver = vocabulary.target("Liver")          # key, display name or synonym
    liver.terminology_entry()                   # Slicer's "TerminologyEntry" segment tag
    vocabulary.modality("t1").key               # -> "MR-T1"
"""

from .entries import (
    DATA_DIR,
    VOCABULARY_FILE,
    Modality,
    Region,
    Target,
    Vocabulary,
    contained_targets,
    load_vocabulary,
    modality,
    modality_for_dicom,
    target,
)
from .hermes_r import TASKS_FILE, HermesRTask, hermes_r_defaults, hermes_r_tasks
from .names import normalize_name, suggest
from .terminology import (
    HERMES_TERMINOLOGY_CONTEXT,
    SLICER_ANATOMIC_CONTEXT,
    SLICER_CATEGORY_TYPE_CONTEXT,
    TERMINOLOGY_FILE,
    Code,
    terminology_context,
    terminology_entry,
)

__all__ = [
    "Code",
    "Modality",
    "Region",
    "Target",
    "HermesRTask",
    "Vocabulary",
    "VOCABULARY_FILE",
    "TASKS_FILE",
    "DATA_DIR",
    "SLICER_CATEGORY_TYPE_CONTEXT",
    "HERMES_TERMINOLOGY_CONTEXT",
    "TERMINOLOGY_FILE",
    "terminology_context",
    "SLICER_ANATOMIC_CONTEXT",
    "terminology_entry",
    "load_vocabulary",
    "modality",
    "modality_for_dicom",
    "target",
    "contained_targets",
    "suggest",
    "normalize_name",
    "hermes_r_tasks",
    "hermes_r_defaults",
]
