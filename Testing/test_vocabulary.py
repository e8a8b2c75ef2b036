"""Tests for the target vocabulary (HermesSegmentLib/vocabulary/ and its data files)."""

from __future__ import annotations

import copy
import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HermesSegment"))

from HermesSegmentLib import vocabulary as v
from HermesSegmentLib.errors import HermesError

REPO = Path(__file__).resolve().parents[1]
MODALITY_SLOTS = {"CT": 0, "PET": 1, "MR-T1": 2, "MR-T2": 3, "cine-MR": 4, "MR": 5}
DEMO_TARGETS = [
    "liver", "spleen", "kidney_left", "kidney_right", "stomach", "aorta", "vertebrae",
    "lung_left", "lung_right", "heart", "urinary_bladder", "liver_tumor", "fdg_avid_lesion",
]


def _reference_tasks_file() -> Path | None:
    # The committed copy (Testing/reference) is checked against ../shared by test_network.py.
    for base in (Path(__file__).parent / "reference", REPO.parent / "shared" / "reference"):
        path = base / "hermes_r_tasks.tsv"
        if path.is_file():
            return path
    return None


@pytest.fixture(scope="module")
def vocab() -> v.Vocabulary:
    return v.load_vocabulary()


@pytest.fixture(scope="module")
def raw() -> dict:
    return json.loads(v.VOCABULARY_FILE.read_text(encoding="utf-8"))


def test_json_loads_and_is_cached(raw, vocab):
    assert raw["version"] == 1
    assert {"modalities", "regions", "targets"} <= set(raw)
    assert v.load_vocabulary() is vocab
    assert v.DATA_DIR == Path(v.__file__).parent.parent / "data"


def test_modalities_and_slots(vocab):
    assert {m.key: m.slot for m in vocab.modalities} == MODALITY_SLOTS
    assert vocab.modality_keys == tuple(MODALITY_SLOTS)
    assert v.modality("CT").dicom_modalities == ("CT",)
    assert v.modality("PET").dicom_modalities == ("PT",)
    for key in ("MR-T1", "MR-T2", "cine-MR", "MR"):
        assert v.modality(key).dicom_modalities == ("MR",)
    for m in vocab.modalities:
        assert all(a == a.lower() for a in m.aliases)


@pytest.mark.parametrize(
    "typed, key",
    [("t1", "MR-T1"), ("pet", "PET"), ("PET", "PET"), ("ct", "CT"), ("MR T1", "MR-T1"), ("mr-t1", "MR-T1"),
     ("mr_t2", "MR-T2"), ("T2", "MR-T2"), ("cine", "cine-MR"), ("cinemr", "cine-MR"), ("Cine MR", "cine-MR"),
     ("mri", "MR"), ("MR", "MR"), ("MR, sequence unspecified", "MR"), ("cine-MR", "cine-MR")],
)
def test_modality_aliases(typed, key):
    assert v.modality(typed).key == key


def test_unknown_modality_is_one_line_naming_keys():
    with pytest.raises(HermesError) as info:
        v.modality("xray")
    message = str(info.value)
    assert "\n" not in message and "'xray'" in message
    for key in MODALITY_SLOTS:
        assert key in message


def test_target_codes_are_snomed_and_names_as_slicer_shows_them(vocab):
    """What the loader does not check (it refuses duplicates, unknown regions, bad colours and codes:
    test_the_loader_refuses_a_broken_vocabulary)."""
    for t in vocab.targets.values():
        for code in (t.category, t.type) + tuple(c for c in (t.modifier, t.anatomic_region) if c):
            assert code[0] == "SCT" and code[1].isdigit(), (t.key, code)
        assert t.name[0].isupper(), t.key
        assert vocab.region(t.region).label
        assert t.terminology == {
            "category": list(t.category), "type": list(t.type),
            "modifier": list(t.modifier) if t.modifier else None,
        }


@pytest.mark.parametrize("break_it, message", [
    (lambda doc: doc["targets"].append(dict(doc["targets"][0])), "duplicate target key"),
    (lambda doc: doc["regions"].append(dict(doc["regions"][0])), "duplicate region key"),
    (lambda doc: doc["modalities"].append(dict(doc["modalities"][0], key="CT2")), "slots are not unique"),
    (lambda doc: doc["targets"][0].update(region="nowhere"), "unknown region"),
    (lambda doc: doc["targets"][0].update(color=[300, 0, 0]), "color must be three integers"),
    (lambda doc: doc["targets"][0].update(type=["SCT", "", "Liver"]), "codingScheme, codeValue, codeMeaning"),
    (lambda doc: doc["targets"][0].update(key="Liver"), "snake_case"),
    (lambda doc: doc["targets"][0].update(single_piece="yes"), "single_piece: expected true or false"),
    (lambda doc: doc["targets"][1].update(inside="nothing"), "inside names unknown target"),
])
def test_the_loader_refuses_a_broken_vocabulary(raw, break_it, message):
    doc = copy.deepcopy(raw)
    break_it(doc)
    with pytest.raises(ValueError, match=message):
        v.entries.parse_vocabulary(doc)


def test_categories_and_laterality(vocab):
    anatomical = ("SCT", "123037004", "Anatomical Structure")
    altered = ("SCT", "49755003", "Morphologically Altered Structure")
    for t in vocab.targets.values():
        if t.region == "lesions":
            assert t.category == altered, t.key
        else:
            assert t.category == anatomical, t.key
        if t.key.endswith("_left"):
            assert t.modifier == ("SCT", "7771000", "Left"), t.key
        elif t.key.endswith("_right"):
            assert t.modifier == ("SCT", "24028007", "Right"), t.key
        else:
            assert t.modifier is None, t.key
    assert vocab.targets["liver"].type == ("SCT", "10200004", "Liver")
    assert vocab.targets["liver"].color == (221, 130, 101)
    assert vocab.targets["kidney_left"].type == vocab.targets["kidney"].type == ("SCT", "64033007", "Kidney")


def test_demo_targets_exist(vocab):
    for key in DEMO_TARGETS:
        assert key in vocab.targets, key


def test_names_do_not_collide_between_targets(vocab):
    seen: dict = {}
    for t in vocab.targets.values():
        for spelled in (t.key, t.name, *t.synonyms):
            norm = v.normalize_name(spelled)
            assert seen.setdefault(norm, t.key) == t.key, f"{spelled!r} used by {seen[norm]} and {t.key}"


@pytest.mark.parametrize(
    "typed, key",
    [("liver", "liver"), ("Liver", "liver"), ("Left kidney", "kidney_left"), ("left_kidney", "kidney_left"),
     ("KIDNEY-LEFT", "kidney_left"), ("kidney left", "kidney_left"), ("Kidneys", "kidney"),
     ("IVC", "inferior_vena_cava"), ("grey matter", "gray_matter"), ("CSF", "cerebrospinal_fluid"),
     ("liver tumour", "liver_tumor"), ("spine", "vertebrae"),
     ("portal vein and splenic vein", "portal_and_splenic_vein"), ("Urinary bladder", "urinary_bladder")],
)
def test_target_lookup(typed, key):
    assert v.target(typed).key == key


def test_unknown_target_is_one_line_with_suggestions():
    with pytest.raises(HermesError) as info:
        v.target("livr")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("unknown target 'livr'; did you mean: liver")
    with pytest.raises(HermesError) as info:
        v.target("qqqqqq\nzzz")
    assert "\n" not in str(info.value) and "did you mean: " in str(info.value)
    with pytest.raises(HermesError):
        v.target(None)  # type: ignore[arg-type]


def test_suggest():
    assert v.suggest("kidny_left", ["kidney_left", "liver", "spleen"])[0] == "kidney_left"
    assert v.suggest("zzzz", ["liver", "spleen"], n=1) != []
    assert v.suggest("x", []) == []
    assert v.suggest("Left Kidny", {"left kidney": "kidney_left", "kidney left": "kidney_left"}) == ["kidney_left"]


def test_terminology_entry_format():
    liver = ("SCT", "10200004", "Liver")
    anatomical = ("SCT", "123037004", "Anatomical Structure")
    expected = (
        "Segmentation category and type - HermesSegment"
        "~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^"
        "~Anatomic codes - DICOM master list~^^~^^"
    )
    assert v.terminology_entry(anatomical, liver) == expected
    assert v.terminology_entry(list(anatomical), list(liver), None) == expected
    assert v.target("liver").terminology_entry() == expected
    assert v.target("kidney_right").terminology_entry() == (
        "Segmentation category and type - HermesSegment"
        "~SCT^123037004^Anatomical Structure~SCT^64033007^Kidney~SCT^24028007^Right"
        "~Anatomic codes - DICOM master list~^^~^^"
    )
    assert v.target("liver_tumor").terminology_entry() == (
        "Segmentation category and type - HermesSegment"
        "~SCT^49755003^Morphologically Altered Structure~SCT^108369006^Neoplasm~^^"
        "~Anatomic codes - DICOM master list~SCT^10200004^Liver~^^"
    )
    with pytest.raises(ValueError):
        v.terminology_entry(anatomical, ("SCT", "1", "a~b"))


@pytest.mark.slicer
def test_terminology_entry_round_trips_through_slicer(vocab):
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkSlicerTerminologiesModuleLogic"):
        pytest.skip("slicer-core without the Terminologies logic")
    logic = slicer.vtkSlicerTerminologiesModuleLogic
    for t in vocab.targets.values():
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(t.terminology_entry(), entry), t.key
        assert logic.SerializeTerminologyEntry(entry) == t.terminology_entry(), t.key


@pytest.mark.slicer
def test_head_and_neck_targets_are_types_of_slicers_general_anatomy_list(vocab):
    """mandible and larynx carry the code, meaning and colour Slicer's own terminology gives them
    (an excerpt of Slicer's General Anatomy list, loaded by slicer-core's terminology logic)."""
    slicer = pytest.importorskip("slicer")
    if not hasattr(slicer, "vtkSlicerTerminologiesModuleLogic"):
        pytest.skip("slicer-core without the Terminologies logic")
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    excerpt = Path(__file__).parent / "reference" / "slicer_general_anatomy_excerpt.json"
    name = logic.LoadTerminologyFromFile(str(excerpt))
    assert name == v.SLICER_CATEGORY_TYPE_CONTEXT
    category = slicer.vtkSlicerTerminologyCategory()
    assert logic.GetNthCategoryInTerminology(name, 0, category)
    known = {}
    for i in range(logic.GetNumberOfTypesInTerminologyCategory(name, category)):
        entry = slicer.vtkSlicerTerminologyType()
        assert logic.GetNthTypeInTerminologyCategory(name, category, i, entry)
        known[entry.GetSlicerLabel()] = (entry.GetCodingSchemeDesignator(), entry.GetCodeValue(),
                                         entry.GetCodeMeaning(), tuple(entry.GetRecommendedDisplayRGBValue()))
    for key in ("mandible", "larynx"):
        target = vocab.targets[key]
        assert target.category == (category.GetCodingSchemeDesignator(), category.GetCodeValue(),
                                   category.GetCodeMeaning())
        assert known[key] == (*target.type, target.color), key
        assert target.modifier is None and target.region == "head_neck"


def test_tasks_table(vocab):
    tasks = v.hermes_r_tasks()
    assert [t.index for t in tasks] == list(range(71))
    for task in tasks:
        assert task.target in vocab.targets, task.index
        assert set(task.modalities) <= set(vocab.modality_keys), task.index
        assert set(task.default_for) <= set(task.modalities), task.index
    first = v.TASKS_FILE.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("#")
    by_index = {t.index: t for t in tasks}
    assert by_index[4].modalities == ("CT", "MR")
    assert by_index[38].modalities == ("MR-T1", "MR-T2")
    assert by_index[64].modalities == ("cine-MR",)
    assert by_index[67].modalities == ("MR-T1",)
    assert by_index[70].modalities == ("PET",)


def test_tasks_match_reference():
    path = _reference_tasks_file()
    if path is None:
        pytest.skip("shared/reference/hermes_r_tasks.tsv not present")
    rows = [r for r in csv.reader(path.read_text(encoding="utf-8").splitlines(), delimiter="\t")
            if r and not r[0].startswith("#")]
    reference = {int(r[0]): r[1] for r in rows}
    ours = {t.index: t.dataset for t in v.hermes_r_tasks()}
    assert sorted(reference) == sorted(ours)
    for index, dataset in ours.items():
        assert reference[index].split()[0].startswith(dataset), (index, dataset, reference[index])
    # the reference's 'amos_mr' note covers exactly the tasks we train with MR
    mr = {t.index for t in v.hermes_r_tasks() if "MR" in t.modalities}
    assert mr == set(range(4, 17))


def test_duplicated_targets_share_one_key():
    tasks = {t.index: t for t in v.hermes_r_tasks()}
    assert {tasks[i].target for i in (0, 9, 24, 38)} == {"liver"}
    assert {tasks[i].target for i in (4, 19, 41)} == {"spleen"}
    assert {tasks[i].target for i in (37, 61)} == {"spinal_cord"}
    assert {tasks[i].target for i in (8, 23, 35)} == {"esophagus"}


def test_exactly_one_default_per_modality_and_target():
    seen: dict = {}
    for task in v.hermes_r_tasks():
        for key in task.default_for:
            assert (key, task.target) not in seen, (key, task.target, seen.get((key, task.target)), task.index)
            seen[(key, task.target)] = task.index
    # every (modality, target) a task is trained for has a default
    for task in v.hermes_r_tasks():
        for key in task.modalities:
            assert (key, task.target) in seen, (key, task.target)
    defaults = v.hermes_r_defaults()
    assert defaults["CT"]["liver"] == 9 and defaults["CT"]["liver_tumor"] == 1
    assert defaults["CT"]["kidney"] == 2 and defaults["CT"]["kidney_tumor"] == 3
    assert defaults["CT"]["portal_and_splenic_vein"] == 28
    assert defaults["CT"]["spinal_cord"] == 37 and 61 not in defaults["CT"].values()
    assert defaults["CT"]["lung_left"] == 32 and defaults["CT"]["mandible_right"] == 63
    assert defaults["MR"]["liver"] == 9
    assert defaults["MR-T1"]["liver"] == defaults["MR-T2"]["liver"] == 38
    assert defaults["MR-T1"]["gray_matter"] == 67
    assert defaults["cine-MR"] == {"left_ventricle": 64, "left_ventricular_myocardium": 65, "right_ventricle": 66}
    assert defaults["PET"] == {"fdg_avid_lesion": 70}


def test_paired_organs_know_their_side():
    from HermesSegmentLib import vocabulary

    sides = {key: target.side for key, target in vocabulary.load_vocabulary().targets.items()}
    assert sides["lung_left"] == "left" and sides["kidney_right"] == "right" and sides["liver"] is None
    assert all(side == key.rsplit("_", 1)[1] for key, side in sides.items() if side)
    assert sum(side is not None for side in sides.values()) >= 20


def test_single_piece_marks_compact_organs_only():
    from HermesSegmentLib import vocabulary

    one_piece = {key for key, target in vocabulary.load_vocabulary().targets.items() if target.single_piece}
    assert {"liver", "spleen", "kidney_left", "lung_right", "heart", "urinary_bladder"} <= one_piece
    # Both kidneys, tubes a coarse prediction may break, the spine's many bones and lesions are not.
    assert not one_piece & {"kidney", "aorta", "esophagus", "vertebrae", "liver_tumor", "fdg_avid_lesion"}


def test_domain_rules_live_in_the_vocabulary():
    """A tumour lies inside its organ: the vocabulary says so, the phantoms and evaluation read it."""
    from HermesSegmentLib import phantoms

    assert v.contained_targets() == {"liver": ("liver_tumor",)}
    assert phantoms.CONTAINS == {"liver": ("liver_tumor",)}
    assert v.modality_for_dicom("MR", "cine t1 sax") == "cine-MR"  # the longest keyword wins
    assert v.modality_for_dicom("MR", "T1 vibe, not t2") == "MR-T1"  # then file order
    assert v.modality_for_dicom("CT", "t2 in a CT description") == "CT"
