"""The extension's terminology context: generated from the vocabulary, shipped as a .term.json, loaded by
Slicer's terminology logic (slicer-core's real one), and naming every target's codes."""

from __future__ import annotations

import json

import pytest

from HermesSegmentLib import vocabulary

slicer = pytest.importorskip("slicer")
pytestmark = pytest.mark.slicer


def test_shipped_file_is_the_vocabularys_context():
    shipped = json.loads(vocabulary.TERMINOLOGY_FILE.read_text(encoding="utf-8"))
    assert shipped == vocabulary.terminology_context(), "run tools/update_terminology.py"


def _codes(logic, context):
    """{(category value, type value, modifier value or None)} found by walking the loaded context."""
    found = set()
    for c in range(logic.GetNumberOfCategoriesInTerminology(context)):
        category = slicer.vtkSlicerTerminologyCategory()
        logic.GetNthCategoryInTerminology(context, c, category)
        for t in range(logic.GetNumberOfTypesInTerminologyCategory(context, category)):
            kind = slicer.vtkSlicerTerminologyType()
            logic.GetNthTypeInTerminologyCategory(context, category, t, kind)
            found.add((category.GetCodeValue(), kind.GetCodeValue(), None))
            for m in range(logic.GetNumberOfTypeModifiersInTerminologyType(context, category, kind)):
                modifier = slicer.vtkSlicerTerminologyType()
                logic.GetNthTypeModifierInTerminologyType(context, category, kind, m, modifier)
                found.add((category.GetCodeValue(), kind.GetCodeValue(), modifier.GetCodeValue()))
    return found


def test_every_target_is_in_the_context_slicer_loads():
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    context = logic.LoadTerminologyFromFile(str(vocabulary.TERMINOLOGY_FILE))
    assert context == vocabulary.HERMES_TERMINOLOGY_CONTEXT
    found = _codes(logic, context)
    for target in vocabulary.load_vocabulary().targets.values():
        key = (target.category[1], target.type[1], target.modifier[1] if target.modifier else None)
        assert key in found, f"{target.key}: {key} is not in {vocabulary.TERMINOLOGY_FILE.name}"
        assert target.terminology_entry().split("~")[0] == context
