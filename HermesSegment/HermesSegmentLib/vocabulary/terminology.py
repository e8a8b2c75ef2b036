"""Slicer's TerminologyEntry tag: coded concepts (SNOMED CT triplets) serialised as Slicer stores them."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple

#: Context names Slicer writes into a ``TerminologyEntry`` tag (Slicer 5.x).
SLICER_CATEGORY_TYPE_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
SLICER_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"
#: The extension's own category/type context, generated from the vocabulary by :func:`terminology_context`
#: (Slicer's General Anatomy list lacks some of our codes). Slicer loads the file at start-up; every
#: segment we write names this context.
HERMES_TERMINOLOGY_CONTEXT = "Segmentation category and type - HermesSegment"
TERMINOLOGY_FILE = (Path(__file__).resolve().parents[2] / "Resources"
                    / "SegmentationCategoryTypeModifier-HermesSegment.term.json")

#: A coded concept: (coding scheme designator, code value, code meaning), e.g. ("SCT", "10200004", "Liver").
Code = Tuple[str, str, str]

_RESERVED = ("~", "^", "|")


def as_code(value: object, what: str) -> Code:
    """Return *value* as a ``Code`` triplet, or raise ``ValueError`` naming *what*."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 3
        or not all(isinstance(part, str) and part.strip() for part in value)
    ):
        raise ValueError(f"{what}: expected [codingScheme, codeValue, codeMeaning] of non-empty strings, got {value!r}")
    for part in value:
        if any(ch in part for ch in _RESERVED):
            raise ValueError(f"{what}: code part {part!r} contains one of {_RESERVED}, which Slicer's tag format "
                             "reserves")
    return (value[0], value[1], value[2])


def as_optional_code(value: object, what: str) -> Optional[Code]:
    return None if value is None else as_code(value, what)


def _serialize_code(code: Optional[Sequence[str]]) -> str:
    if code is None:
        return "^^"
    scheme, value, meaning = as_code(code, "terminology code")
    return f"{scheme}^{value}^{meaning}"


def terminology_entry(
    category: Sequence[str],
    type: Sequence[str],  # the DICOM/Slicer name of the field
    modifier: Optional[Sequence[str]] = None,
    anatomic_region: Optional[Sequence[str]] = None,
    anatomic_region_modifier: Optional[Sequence[str]] = None,
    *,
    context: str = HERMES_TERMINOLOGY_CONTEXT,
    anatomic_context: str = SLICER_ANATOMIC_CONTEXT,
) -> str:
    """Serialise codes the way Slicer stores them in a segment's ``TerminologyEntry`` tag.

    Slicer 5.x format (``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``)::

        <category-type context>~<category>~<type>~<type modifier>~<anatomic context>~<region>~<region modifier>

    with each code written ``scheme^value^meaning`` and an absent code written ``^^``. Example:
    ``terminology_entry(["SCT", "123037004", "Anatomical Structure"], ["SCT", "10200004", "Liver"])``
    is, on one line::

        Segmentation category and type - HermesSegment~SCT^123037004^Anatomical Structure
        ~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^
    """
    parts = [
        context,
        _serialize_code(category),
        _serialize_code(type),
        _serialize_code(modifier),
        anatomic_context,
        _serialize_code(anatomic_region),
        _serialize_code(anatomic_region_modifier),
    ]
    return "~".join(parts)


def _code_json(code: Sequence[str]) -> dict:
    scheme, value, meaning = code
    return {"CodingSchemeDesignator": scheme, "CodeValue": value, "CodeMeaning": meaning}


def terminology_context() -> dict:
    """The extension's terminology context (Slicer's ``.term.json`` segment-context schema): every
    category, type and type modifier our targets use, with the targets' colours.

    Written to ``Resources/SegmentationCategoryTypeModifier-HermesSegment.term.json`` by
    ``tools/update_terminology.py``; a test checks the file equals this and loads in slicer-core.
    """
    from .entries import load_vocabulary

    categories: dict = {}
    for target in load_vocabulary().targets.values():
        category = categories.setdefault(tuple(target.category), {**_code_json(target.category), "Type": {}})
        entry = category["Type"].setdefault(tuple(target.type), {**_code_json(target.type)})
        rgb = list(target.color)
        if target.modifier is None:
            entry["recommendedDisplayRGBValue"] = rgb
        else:
            modifiers = entry.setdefault("Modifier", [])
            if not any(m["CodeValue"] == target.modifier[1] for m in modifiers):
                modifiers.append({**_code_json(target.modifier), "recommendedDisplayRGBValue": rgb})
        if target.anatomic_region is not None:
            entry["showAnatomy"] = "true"
    return {
        "SegmentationCategoryTypeContextName": HERMES_TERMINOLOGY_CONTEXT,
        "@schema": "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#",
        "SegmentationCodes": {"Category": [
            {**{k: v for k, v in category.items() if k != "Type"}, "Type": list(category["Type"].values())}
            for category in categories.values()]},
    }
