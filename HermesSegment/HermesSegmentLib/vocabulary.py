"""The target vocabulary: modalities, regions, targets, terminology codes and colours.

The data lives in two files next to this module, and they are the one source of truth:

- ``data/vocabulary.json``: the modalities (with the Hermes-R modality slot of each), the regions
  used to group the GUI checklist, and one entry per anatomical target with its display name,
  synonyms, SNOMED CT codes as ``[codingScheme, codeValue, codeMeaning]`` triplets exactly as
  3D Slicer's terminology uses them, and its display colour.
- ``data/hermes_r_tasks.tsv``: the 71 tasks of the released Hermes-R weights (task index, source
  dataset, modalities, target key) and which task index serves each (modality, target) pair.

This module only reads and looks up; it imports nothing outside the standard library (no Qt,
Slicer or torch), so the CLI, the Slicer module and the tests share it.

Typical use::

    from HermesSegmentLib import vocabulary
    liver = vocabulary.target("Liver")          # key, display name or synonym
    liver.terminology_entry()                   # Slicer's "TerminologyEntry" segment tag
    vocabulary.modality("t1").key               # -> "MR-T1"
"""

from __future__ import annotations

import csv
import difflib
import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence, Tuple, Union

from .errors import HermesError

__all__ = [
    "Code",
    "Modality",
    "Region",
    "Target",
    "HermesRTask",
    "Vocabulary",
    "DATA_DIR",
    "SLICER_CATEGORY_TYPE_CONTEXT",
    "SLICER_ANATOMIC_CONTEXT",
    "terminology_entry",
    "parse_terminology_entry",
    "load_vocabulary",
    "modality",
    "target",
    "suggest",
    "normalize_name",
    "hermes_r_tasks",
    "hermes_r_defaults",
]

DATA_DIR = Path(__file__).parent / "data"
VOCABULARY_FILE = DATA_DIR / "vocabulary.json"
TASKS_FILE = DATA_DIR / "hermes_r_tasks.tsv"

#: Context names Slicer writes into a ``TerminologyEntry`` tag (Slicer 5.x).
SLICER_CATEGORY_TYPE_CONTEXT = "Segmentation category and type - 3D Slicer General Anatomy list"
SLICER_ANATOMIC_CONTEXT = "Anatomic codes - DICOM master list"

#: A coded concept: (coding scheme designator, code value, code meaning), e.g. ("SCT", "10200004", "Liver").
Code = Tuple[str, str, str]

_RESERVED = ("~", "^", "|")
_SIDES = {"7771000": "left", "24028007": "right"}  # SNOMED CT laterality qualifiers


def _code(value: object, what: str) -> Code:
    """Return *value* as a ``Code`` triplet, or raise ``ValueError`` naming *what*."""
    if (
        not isinstance(value, (list, tuple))
        or len(value) != 3
        or not all(isinstance(part, str) and part.strip() for part in value)
    ):
        raise ValueError(f"{what}: expected [codingScheme, codeValue, codeMeaning] of non-empty strings, got {value!r}")
    for part in value:
        if any(ch in part for ch in _RESERVED):
            raise ValueError(f"{what}: code part {part!r} contains one of {_RESERVED}, which Slicer's tag format reserves")
    return (value[0], value[1], value[2])


def _optional_code(value: object, what: str) -> Optional[Code]:
    return None if value is None else _code(value, what)


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what}: expected true or false, got {value!r}")
    return value


def _serialize_code(code: Optional[Sequence[str]]) -> str:
    if code is None:
        return "^^"
    scheme, value, meaning = _code(code, "terminology code")
    return f"{scheme}^{value}^{meaning}"


def terminology_entry(
    category: Sequence[str],
    type: Sequence[str],  # noqa: A002 - the DICOM/Slicer name of the field
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

    with each code written ``scheme^value^meaning`` and an absent code written ``^^``. Example::

        >>> terminology_entry(["SCT", "123037004", "Anatomical Structure"], ["SCT", "10200004", "Liver"])
        'Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^'
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


def parse_terminology_entry(entry: str) -> dict:
    """Parse a ``TerminologyEntry`` string back into its parts (the inverse of :func:`terminology_entry`).

    Returns a dict with ``context``, ``category``, ``type``, ``modifier``, ``anatomic_context``,
    ``anatomic_region`` and ``anatomic_region_modifier``; absent codes are ``None``. Raises
    ``ValueError`` if the string does not have Slicer's seven ``~``-separated fields.
    """
    fields = entry.split("~")
    if len(fields) != 7:
        raise ValueError(f"not a Slicer TerminologyEntry (expected 7 '~'-separated fields): {entry!r}")

    def code(text: str) -> Optional[Code]:
        pieces = text.split("^")
        if len(pieces) != 3:
            raise ValueError(f"not a Slicer code 'scheme^value^meaning': {text!r}")
        if not any(pieces):
            return None
        return (pieces[0], pieces[1], pieces[2])

    return {
        "context": fields[0],
        "category": code(fields[1]),
        "type": code(fields[2]),
        "modifier": code(fields[3]),
        "anatomic_context": fields[4],
        "anatomic_region": code(fields[5]),
        "anatomic_region_modifier": code(fields[6]),
    }


@dataclass(frozen=True)
class Modality:
    """An imaging modality as Hermes sees it.

    ``slot`` is the Hermes-R modality-prior index (CT 0, PET 1, MR-T1 2, MR-T2 3, cine-MR 4, MR 5);
    ``dicom_modalities`` are the DICOM (0008,0060) values an image of this modality carries;
    ``aliases`` are the lowercase forms users type ("t1", "mr t1", "pet", ...).
    """

    key: str
    label: str
    slot: int
    dicom_modalities: Tuple[str, ...]
    aliases: Tuple[str, ...]


@dataclass(frozen=True)
class Region:
    """A body region grouping targets in the GUI checklist (``key`` e.g. ``"abdomen"``)."""

    key: str
    label: str


@dataclass(frozen=True)
class Target:
    """One anatomical target (or lesion type) with its standard name, codes and colour.

    ``category``/``type``/``modifier`` are SNOMED CT triplets as Slicer's terminology uses them;
    ``modifier`` is the laterality (or ``None``). ``anatomic_region`` is set for lesions (e.g. a
    Neoplasm in the Liver). ``color`` is RGB 0-255. ``single_piece``: the structure is one
    connected piece of tissue in every patient (a compact organ such as the liver or one lung; not
    tubes that a coarse prediction may break, such as the aorta, nor vertebrae or lesions), so a
    prediction of it may keep its largest component (:class:`postprocess.PostprocessOptions`).
    """

    key: str
    name: str
    region: str
    synonyms: Tuple[str, ...]
    category: Code
    type: Code
    modifier: Optional[Code]
    color: Tuple[int, int, int]
    anatomic_region: Optional[Code] = None
    anatomic_region_modifier: Optional[Code] = None
    notes: str = ""
    single_piece: bool = False

    @property
    def terminology(self) -> dict:
        """``{"category": [...], "type": [...], "modifier": [...] or None}`` (JSON-ready, as in the model manifest)."""
        return {
            "category": list(self.category),
            "type": list(self.type),
            "modifier": list(self.modifier) if self.modifier is not None else None,
        }

    @property
    def side(self) -> Optional[str]:
        """``"left"`` or ``"right"`` for one of a pair of organs (its laterality modifier), else None."""
        return _SIDES.get(self.modifier[1]) if self.modifier is not None else None

    def terminology_entry(self) -> str:
        """This target's Slicer ``TerminologyEntry`` tag value (see :func:`terminology_entry`)."""
        return terminology_entry(
            self.category, self.type, self.modifier, self.anatomic_region, self.anatomic_region_modifier
        )


@dataclass(frozen=True)
class HermesRTask:
    """One task of the released Hermes-R weights (a row of ``data/hermes_r_tasks.tsv``).

    ``modalities`` are the modality keys the task was trained with; ``default_for`` the modality
    keys for which this task index is the one that serves ``target``.
    """

    index: int
    dataset: str
    modalities: Tuple[str, ...]
    target: str
    default_for: Tuple[str, ...]


def normalize_name(name: str) -> str:
    """Fold a user-typed name for lookup: lowercase, drop spaces, underscores, hyphens and punctuation.

    ``"Left kidney"``, ``"left_kidney"`` and ``"LEFT-KIDNEY"`` all become ``"leftkidney"``.
    """
    return re.sub(r"[^0-9a-z]+", "", name.casefold())


def suggest(
    name: str,
    candidates: Union[Iterable[str], Mapping[str, str]],
    n: int = 3,
    cutoff: float = 0.6,
) -> list:
    """Return up to *n* of *candidates* closest to *name* (``difflib``), best first, never empty if any exist.

    Matching is done on :func:`normalize_name` forms, so case and separators do not matter. If
    *candidates* is a mapping, its keys are matched and its values returned (several spellings
    may map to one key; each value is returned once). When nothing reaches *cutoff*, the closest
    candidates are returned anyway, so an error message always has something to offer.
    """
    if isinstance(candidates, Mapping):
        pairs = [(str(k), str(v)) for k, v in candidates.items()]
    else:
        pairs = [(str(c), str(c)) for c in candidates]
    if not pairs or n <= 0:
        return []
    by_norm: dict = {}
    for spelled, value in pairs:
        values = by_norm.setdefault(normalize_name(spelled) or spelled.casefold(), [])
        if value not in values:
            values.append(value)
    query = normalize_name(name) or name.casefold()
    norms = list(by_norm)
    ranked = difflib.get_close_matches(query, norms, n=len(norms), cutoff=cutoff)
    if not ranked:
        ranked = sorted(norms, key=lambda c: difflib.SequenceMatcher(None, query, c).ratio(), reverse=True)
    out: list = []
    for norm in ranked:
        for value in by_norm[norm]:
            if value not in out:
                out.append(value)
            if len(out) >= n:
                return out
    return out


class Vocabulary:
    """The loaded vocabulary.

    ``modalities`` and ``regions`` are tuples in file order (modalities in slot order);
    ``targets`` is a dict by target key (file order). ``modality_keys``/``region_keys`` list the keys.
    """

    def __init__(
        self,
        version: int,
        modalities: Mapping[str, Modality],
        regions: Mapping[str, Region],
        targets: Mapping[str, Target],
    ) -> None:
        self.version = version
        self._modalities = dict(modalities)
        self._regions = dict(regions)
        self.modalities: Tuple[Modality, ...] = tuple(sorted(self._modalities.values(), key=lambda m: m.slot))
        self.regions: Tuple[Region, ...] = tuple(self._regions.values())
        self.targets: dict = dict(targets)
        self._modality_index: dict = {}
        for m in self.modalities:
            for spelled in (m.key, m.label, *m.aliases):
                norm = _fold_modality(spelled)
                other = self._modality_index.setdefault(norm, m.key)
                if other != m.key:
                    raise ValueError(f"vocabulary: modality name {spelled!r} is used by both {other} and {m.key}")
        self._target_index: dict = {}
        self._target_spellings: dict = {}
        for t in self.targets.values():
            for spelled in (t.key, t.name, *t.synonyms):
                norm = normalize_name(spelled)
                if not norm:
                    raise ValueError(f"vocabulary: target {t.key} has an empty name or synonym {spelled!r}")
                other = self._target_index.setdefault(norm, t.key)
                if other != t.key:
                    raise ValueError(f"vocabulary: target name {spelled!r} is used by both {other} and {t.key}")
                self._target_spellings.setdefault(spelled, t.key)

    def modality(self, name: str) -> Modality:
        """Resolve a modality key, label or alias (case-insensitive); unknown -> :class:`HermesError`."""
        if isinstance(name, Modality):
            return name
        if not isinstance(name, str):
            raise HermesError(f"modality must be a string, not {type(name).__name__}; valid modalities: {', '.join(self.modality_keys)}")
        key = self._modality_index.get(_fold_modality(name))
        if key is None:
            raise HermesError(
                f"unknown modality {_quote(name)}; valid modalities: {', '.join(self.modality_keys)}"
            )
        return self._modalities[key]

    def target(self, name: str) -> Target:
        """Resolve a target key, display name or synonym (case/space/underscore/hyphen-insensitive).

        Unknown names raise :class:`HermesError` suggesting the closest target keys.
        """
        if isinstance(name, Target):
            return name
        if not isinstance(name, str):
            raise HermesError(f"target must be a string, not {type(name).__name__}; e.g. {', '.join(list(self.targets)[:3])}")
        key = self._target_index.get(normalize_name(name))
        if key is None:
            close = suggest(name, self._target_spellings, n=3)
            raise HermesError(f"unknown target {_quote(name)}; did you mean: {', '.join(close)}?")
        return self.targets[key]

    def modality_by_slot(self, slot: int) -> Modality:
        """The modality whose Hermes-R slot is *slot*."""
        for m in self.modalities:
            if m.slot == slot:
                return m
        raise HermesError(f"no modality has slot {slot}; slots are {[m.slot for m in self.modalities]}")

    @property
    def modality_keys(self) -> Tuple[str, ...]:
        """Modality keys in slot order: ``("CT", "PET", "MR-T1", "MR-T2", "cine-MR", "MR")``."""
        return tuple(m.key for m in self.modalities)

    @property
    def region_keys(self) -> Tuple[str, ...]:
        """Region keys in file order."""
        return tuple(r.key for r in self.regions)

    def region(self, key: str) -> Region:
        """The region with this key; unknown -> :class:`HermesError`."""
        if key not in self._regions:
            raise HermesError(f"unknown region {_quote(key)}; valid regions: {', '.join(self.region_keys)}")
        return self._regions[key]


def _fold_modality(name: str) -> str:
    """Modality lookup form: lowercase with runs of space/underscore/hyphen folded to one space."""
    return re.sub(r"[\s_\-]+", " ", name.strip().casefold())


def _quote(name: str) -> str:
    """Quote a user string for a one-line message (newlines escaped, long strings cut)."""
    text = name if len(name) <= 60 else name[:57] + "..."
    return "'" + text.replace("\n", "\\n").replace("\r", "\\r") + "'"


def _parse_vocabulary(doc: Mapping) -> Vocabulary:
    """Validate the JSON document and build a :class:`Vocabulary` (``ValueError`` on bad data)."""
    if doc.get("version") != 1:
        raise ValueError(f"vocabulary.json: unsupported version {doc.get('version')!r} (expected 1)")
    modalities: dict = {}
    for m in doc["modalities"]:
        key = m["key"]
        if key in modalities:
            raise ValueError(f"vocabulary.json: duplicate modality key {key!r}")
        if not isinstance(m["slot"], int):
            raise ValueError(f"vocabulary.json: modality {key} slot must be an integer")
        modalities[key] = Modality(
            key=key,
            label=m["label"],
            slot=m["slot"],
            dicom_modalities=tuple(m["dicom_modalities"]),
            aliases=tuple(a.casefold() for a in m.get("aliases", ())),
        )
    slots = [m.slot for m in modalities.values()]
    if len(set(slots)) != len(slots):
        raise ValueError(f"vocabulary.json: modality slots are not unique: {slots}")
    regions: dict = {}
    for r in doc["regions"]:
        if r["key"] in regions:
            raise ValueError(f"vocabulary.json: duplicate region key {r['key']!r}")
        regions[r["key"]] = Region(key=r["key"], label=r["label"])
    targets: dict = {}
    for t in doc["targets"]:
        key = t["key"]
        where = f"vocabulary.json: target {key!r}"
        if not re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", key):
            raise ValueError(f"{where}: key must be snake_case")
        if key in targets:
            raise ValueError(f"vocabulary.json: duplicate target key {key!r}")
        if t["region"] not in regions:
            raise ValueError(f"{where}: unknown region {t['region']!r}")
        color = t["color"]
        if (
            not isinstance(color, list)
            or len(color) != 3
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)
        ):
            raise ValueError(f"{where}: color must be three integers 0-255, got {color!r}")
        targets[key] = Target(
            key=key,
            name=t["name"],
            region=t["region"],
            synonyms=tuple(t.get("synonyms", ())),
            category=_code(t["category"], f"{where} category"),
            type=_code(t["type"], f"{where} type"),
            modifier=_optional_code(t.get("modifier"), f"{where} modifier"),
            color=(color[0], color[1], color[2]),
            anatomic_region=_optional_code(t.get("anatomic_region"), f"{where} anatomic_region"),
            anatomic_region_modifier=_optional_code(t.get("anatomic_region_modifier"), f"{where} anatomic_region_modifier"),
            notes=t.get("notes", ""),
            single_piece=_flag(t.get("single_piece", False), f"{where} single_piece"),
        )
    return Vocabulary(doc["version"], modalities, regions, targets)


@functools.lru_cache(maxsize=None)
def load_vocabulary() -> Vocabulary:
    """Load and validate ``data/vocabulary.json`` (cached; the same object is returned every call)."""
    with open(VOCABULARY_FILE, encoding="utf-8") as f:
        doc = json.load(f)
    return _parse_vocabulary(doc)


def modality(name: str) -> Modality:
    """Resolve a modality by key, label or alias, case-insensitively (``"t1"`` -> MR-T1, ``"pet"`` -> PET).

    Raises :class:`HermesError` (one line, naming the valid keys) for an unknown name.
    """
    return load_vocabulary().modality(name)


def target(name: str) -> Target:
    """Resolve a target by key, display name or synonym (case/space/underscore/hyphen-insensitive).

    Raises :class:`HermesError` like ``unknown target 'livr'; did you mean: liver, ...?``.
    """
    return load_vocabulary().target(name)


def _split_list(text: str) -> Tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@functools.lru_cache(maxsize=None)
def _load_tasks() -> Tuple[HermesRTask, ...]:
    vocab = load_vocabulary()
    with open(TASKS_FILE, encoding="utf-8", newline="") as f:
        lines = [line for line in f if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines, delimiter="\t")
    expected = ["index", "dataset", "modalities", "target", "default_for"]
    if reader.fieldnames != expected:
        raise ValueError(f"hermes_r_tasks.tsv: columns {reader.fieldnames} (expected {expected})")
    tasks = []
    for row in reader:
        task = HermesRTask(
            index=int(row["index"]),
            dataset=row["dataset"].strip(),
            modalities=_split_list(row["modalities"]),
            target=row["target"].strip(),
            default_for=_split_list(row["default_for"] or ""),
        )
        where = f"hermes_r_tasks.tsv: task {task.index}"
        if task.target not in vocab.targets:
            raise ValueError(f"{where}: unknown target {task.target!r}")
        for key in task.modalities + task.default_for:
            if key not in vocab.modality_keys:
                raise ValueError(f"{where}: unknown modality {key!r}")
        if not set(task.default_for) <= set(task.modalities):
            raise ValueError(f"{where}: default_for {task.default_for} is not among its modalities {task.modalities}")
        tasks.append(task)
    if [t.index for t in tasks] != list(range(len(tasks))):
        raise ValueError("hermes_r_tasks.tsv: task indices must be 0, 1, 2, ... in order")
    return tuple(tasks)


def hermes_r_tasks() -> list:
    """The tasks of the released Hermes-R weights, index order (``list[HermesRTask]``)."""
    return list(_load_tasks())


def hermes_r_defaults() -> dict:
    """``{modality key: {target key: task index}}``: which Hermes-R task serves each (modality, target).

    This is the ``defaults`` block of a Hermes-R model manifest. Raises ``ValueError`` if the task
    table names two defaults for one (modality, target).
    """
    defaults: dict = {}
    for task in _load_tasks():
        for key in task.default_for:
            per_modality = defaults.setdefault(key, {})
            if task.target in per_modality:
                raise ValueError(
                    f"hermes_r_tasks.tsv: two defaults for ({key}, {task.target}): "
                    f"{per_modality[task.target]} and {task.index}"
                )
            per_modality[task.target] = task.index
    return defaults
