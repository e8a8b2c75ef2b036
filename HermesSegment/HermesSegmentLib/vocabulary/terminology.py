"""Slicer's TerminologyEntry tag: coded concepts (SNOMED CT triplets) serialised as Slicer stores them."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

#: Context names Slicer writes into a ``TerminologyEntry`` tag (Slicer 5.x).
SLICER_CATEGORY_TYPE_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
SLICER_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

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
    context: str = SLICER_CATEGORY_TYPE_CONTEXT,
    anatomic_context: str = SLICER_ANATOMIC_CONTEXT,
) -> str:
    """Serialise codes the way Slicer stores them in a segment's ``TerminologyEntry`` tag.

    Slicer 5.x format (``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``)::

        <category-type context>~<category>~<type>~<type modifier>~<anatomic context>~<region>~<region modifier>

    with each code written ``scheme^value^meaning`` and an absent code written ``^^``. Example:
    ``terminology_entry(["SCT", "123037004", "Anatomical Structure"], ["SCT", "10200004", "Liver"])``
    is, on one line::

        Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure
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
