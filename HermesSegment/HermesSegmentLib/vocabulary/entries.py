"""The entries of data/vocabulary.json: modalities, regions and targets, loaded, validated and looked up."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Optional, Tuple

from ..errors import HermesError
from .names import fold_modality, normalize_name, quote, suggest
from .terminology import Code, as_code, as_optional_code, terminology_entry

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
VOCABULARY_FILE = DATA_DIR / "vocabulary.json"

_SIDES = {"7771000": "left", "24028007": "right"}  # SNOMED CT laterality qualifiers


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{what}: expected true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class Modality:
    """An imaging modality as Hermes sees it.

    ``slot`` is the Hermes-R modality-prior index (CT 0, PET 1, MR-T1 2, MR-T2 3, cine-MR 4, MR 5);
    ``dicom_modalities`` are the DICOM (0008,0060) values an image of this modality carries;
    ``aliases`` are the lowercase forms users type ("t1", "mr t1", "pet", ...);
    ``series_keywords``: words of a DICOM series description (0008,103E) that tell this modality
    from others sharing its DICOM value ("t2" in "t2_tse_tra"), see
    :meth:`Vocabulary.modality_for_dicom`.
    """

    key: str
    label: str
    slot: int
    dicom_modalities: Tuple[str, ...]
    aliases: Tuple[str, ...]
    series_keywords: Tuple[str, ...] = ()


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
    ``inside``: the target this one lies inside (a liver tumour in the liver), see
    :meth:`Vocabulary.contained_targets`.
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
    inside: Optional[str] = None

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
                norm = fold_modality(spelled)
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
            raise HermesError(f"modality must be a string, not {type(name).__name__}; valid modalities: "
                              f"{', '.join(self.modality_keys)}")
        key = self._modality_index.get(fold_modality(name))
        if key is None:
            raise HermesError(
                f"unknown modality {quote(name)}; valid modalities: {', '.join(self.modality_keys)}"
            )
        return self._modalities[key]

    def target(self, name: str) -> Target:
        """Resolve a target key, display name or synonym (case/space/underscore/hyphen-insensitive).

        Unknown names raise :class:`HermesError` suggesting the closest target keys.
        """
        if isinstance(name, Target):
            return name
        if not isinstance(name, str):
            raise HermesError(f"target must be a string, not {type(name).__name__}; e.g. "
                              f"{', '.join(list(self.targets)[:3])}")
        key = self._target_index.get(normalize_name(name))
        if key is None:
            close = suggest(name, self._target_spellings, n=3)
            raise HermesError(f"unknown target {quote(name)}; did you mean: {', '.join(close)}?")
        return self.targets[key]

    @property
    def modality_keys(self) -> Tuple[str, ...]:
        """Modality keys in slot order: ``("CT", "PET", "MR-T1", "MR-T2", "cine-MR", "MR")``."""
        return tuple(m.key for m in self.modalities)

    @property
    def region_keys(self) -> Tuple[str, ...]:
        """Region keys in file order."""
        return tuple(r.key for r in self.regions)

    def modality_for_dicom(self, dicom_modality: str, series_description: str = "") -> Optional[str]:
        """The modality key of a DICOM Modality value (0008,0060), e.g. "PT" -> "PET"; None if unknown.

        When several modalities share the value (MR), the one whose ``series_keywords`` appear in the
        series description wins, the longest keyword first ("cine t1" is cine-MR); without one, the
        modality whose key is the DICOM value itself ("MR", sequence unspecified).
        """
        value = dicom_modality.strip().upper()
        candidates = [m for m in self.modalities if value in m.dicom_modalities]
        if len(candidates) <= 1:
            return candidates[0].key if candidates else None
        description = series_description.casefold()
        matches = [(len(word), -index, m.key) for index, m in enumerate(candidates)
                   for word in m.series_keywords if word in description]
        if matches:
            return max(matches)[2]
        return next((m.key for m in candidates if m.key.upper() == value), None)

    def contained_targets(self) -> dict:
        """``{container key: (keys of the targets that lie inside it, ...)}`` from the targets' ``inside``,
        e.g. ``{"liver": ("liver_tumor",)}``: the liver target is the whole organ, tumours included, so
        where one label per voxel hides the overlap the container takes the voxels of its contents."""
        contained: dict = {}
        for target in self.targets.values():
            if target.inside is not None:
                contained[target.inside] = contained.get(target.inside, ()) + (target.key,)
        return contained

    def region(self, key: str) -> Region:
        """The region with this key; unknown -> :class:`HermesError`."""
        if key not in self._regions:
            raise HermesError(f"unknown region {quote(key)}; valid regions: {', '.join(self.region_keys)}")
        return self._regions[key]


def parse_vocabulary(doc: Mapping) -> Vocabulary:
    """Validate the JSON document and build a :class:`Vocabulary` (``ValueError`` on bad data)."""
    if doc.get("version") != 1:
        raise ValueError(f"vocabulary.json: unsupported version {doc.get('version')!r} (expected 1)")
    modalities = _parse_modalities(doc["modalities"])
    regions: dict = {}
    for r in doc["regions"]:
        if r["key"] in regions:
            raise ValueError(f"vocabulary.json: duplicate region key {r['key']!r}")
        regions[r["key"]] = Region(key=r["key"], label=r["label"])
    targets: dict = {}
    for t in doc["targets"]:
        if t["key"] in targets:
            raise ValueError(f"vocabulary.json: duplicate target key {t['key']!r}")
        targets[t["key"]] = _parse_target(t, regions)
    for key, entry in targets.items():
        if entry.inside is not None and entry.inside not in targets:
            raise ValueError(f"vocabulary.json: target {key!r}: inside names unknown target {entry.inside!r}")
    return Vocabulary(doc["version"], modalities, regions, targets)


def _parse_modalities(entries: Iterable[Mapping]) -> dict:
    modalities: dict = {}
    for m in entries:
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
            series_keywords=tuple(k.casefold() for k in m.get("series_keywords", ())),
        )
    slots = [m.slot for m in modalities.values()]
    if len(set(slots)) != len(slots):
        raise ValueError(f"vocabulary.json: modality slots are not unique: {slots}")
    return modalities


def _parse_target(t: Mapping, regions: Mapping[str, Region]) -> Target:
    key = t["key"]
    where = f"vocabulary.json: target {key!r}"
    if not re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", key):
        raise ValueError(f"{where}: key must be snake_case")
    if t["region"] not in regions:
        raise ValueError(f"{where}: unknown region {t['region']!r}")
    color = t["color"]
    if (
        not isinstance(color, list)
        or len(color) != 3
        or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)
    ):
        raise ValueError(f"{where}: color must be three integers 0-255, got {color!r}")
    return Target(
        key=key,
        name=t["name"],
        region=t["region"],
        synonyms=tuple(t.get("synonyms", ())),
        category=as_code(t["category"], f"{where} category"),
        type=as_code(t["type"], f"{where} type"),
        modifier=as_optional_code(t.get("modifier"), f"{where} modifier"),
        color=(color[0], color[1], color[2]),
        anatomic_region=as_optional_code(t.get("anatomic_region"), f"{where} anatomic_region"),
        anatomic_region_modifier=as_optional_code(t.get("anatomic_region_modifier"),
                                                  f"{where} anatomic_region_modifier"),
        notes=t.get("notes", ""),
        single_piece=_flag(t.get("single_piece", False), f"{where} single_piece"),
        inside=t.get("inside"),
    )


@functools.cache
def load_vocabulary() -> Vocabulary:
    """Load and validate ``data/vocabulary.json`` (cached; the same object is returned every call)."""
    with open(VOCABULARY_FILE, encoding="utf-8") as f:
        doc = json.load(f)
    return parse_vocabulary(doc)


def modality_for_dicom(dicom_modality: str, series_description: str = "") -> Optional[str]:
    """The modality key of a DICOM Modality value and series description (:meth:`Vocabulary.modality_for_dicom`)."""
    return load_vocabulary().modality_for_dicom(dicom_modality, series_description)


def contained_targets() -> dict:
    """``{container key: (contained target keys, ...)}`` (:meth:`Vocabulary.contained_targets`)."""
    return load_vocabulary().contained_targets()


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
