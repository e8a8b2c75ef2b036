"""The model manifest: its schema, validation, and the Hermes-R manifest.

The schema (``data/manifest.schema.json``) is the one source of truth for the manifest's shape;
``docs/architecture.md`` shows an example. Preprocessing constants live here and nowhere else:
``preprocess/`` reads them from whichever manifest it is given.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Mapping

from .. import vocabulary
from ..errors import HermesError
from ..network.config import HERMES_R

MANIFEST_KEY = "hermes_manifest"
FORMAT = "hermes-segment-model"
FORMAT_VERSION = 1
DATA_DIR = vocabulary.DATA_DIR

# Upstream Hermes-R preprocessing (DESIGN.md): CT clipped to [-991, 500], MR and PET clipped to
# the volume's 2nd-98th percentile; then a per-volume z-score.
CT_NORMALIZATION = {"method": "clip_zscore", "clip": [-991.0, 500.0]}
PERCENTILE_NORMALIZATION = {"method": "percentile_clip_zscore", "percentiles": [2.0, 98.0]}
HERMES_R_INPUT = {"window_size_zyx": [128, 128, 128], "spacing_zyx_mm": [1.5, 1.5, 1.5], "orientation": "LPS"}


def default_normalization(modality_key: str) -> dict[str, Any]:
    return dict(CT_NORMALIZATION if modality_key == "CT" else PERCENTILE_NORMALIZATION)


@lru_cache(maxsize=1)
def manifest_schema() -> dict[str, Any]:
    return json.loads((DATA_DIR / "manifest.schema.json").read_text(encoding="utf-8"))


def validate_manifest(manifest: Any, source: str = "manifest") -> None:
    """Raise a one-line :class:`HermesError` naming the first problem, or return."""
    import jsonschema

    if isinstance(manifest, Mapping) and manifest.get("format") == FORMAT:
        version = manifest.get("format_version")
        if isinstance(version, int) and version > FORMAT_VERSION:
            raise HermesError(
                f"{source}: model format version {version} is newer than this HermesSegment understands "
                f"({FORMAT_VERSION}); update HermesSegment"
            )
    validator = jsonschema.Draft202012Validator(manifest_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(manifest))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise HermesError(f"{source}: invalid manifest at {where}: {error.message.splitlines()[0]}")
    _check_consistency(manifest, source)


def _check_consistency(manifest: Mapping[str, Any], source: str) -> None:
    """What the schema cannot say: indices in range, defaults pointing at real tasks, queries holding
    real tasks and every offered one."""
    rows = manifest["architecture"]["num_task_priors"]
    slots = manifest["architecture"]["num_modality_slots"]
    tasks = {task["index"]: task for task in manifest["tasks"]}
    if len(tasks) != len(manifest["tasks"]):
        raise HermesError(f"{source}: invalid manifest: two tasks share an index")
    for index in tasks:
        if index >= rows:
            raise HermesError(f"{source}: invalid manifest: task index {index} >= num_task_priors {rows}")
    keys = [m["key"] for m in manifest["modalities"]]
    _check_modalities(manifest["modalities"], slots, source)
    for modality, targets in manifest["defaults"].items():
        if modality not in keys:
            raise HermesError(f"{source}: invalid manifest: defaults name modality {modality} not in 'modalities'")
        for target, index in targets.items():
            task = tasks.get(index)
            if task is None or task["target"] != target:
                raise HermesError(f"{source}: invalid manifest: defaults[{modality}][{target}] -> {index} is not "
                                  "that target's task")
    _check_queries(manifest, set(tasks), source)


def _check_modalities(modalities: list, slots: int, source: str) -> None:
    """Each modality once, in a slot the network has, with its normalisation ranges going from low to high."""
    keys = [m["key"] for m in modalities]
    if len(set(keys)) != len(keys):
        raise HermesError(f"{source}: invalid manifest: modality {next(k for k in keys if keys.count(k) > 1)} is "
                          "listed twice")
    for modality in modalities:
        if modality["slot"] >= slots:
            raise HermesError(f"{source}: invalid manifest: modality {modality['key']} slot >= {slots}")
        normalization = modality.get("normalization", {})
        for name in ("clip", "percentiles"):  # a reversed range would turn every image into one value
            low_high = normalization.get(name)
            if low_high is not None and not low_high[0] < low_high[1]:
                raise HermesError(f"{source}: invalid manifest: modality {modality['key']} normalization {name} "
                                  f"{low_high} must go from low to high")


def _check_queries(manifest: Mapping[str, Any], task_indices: set[int], source: str) -> None:
    """Each query names real tasks and holds every task offered for its modality."""
    for modality, query in manifest.get("queries", {}).items():
        unknown = [index for index in query if index not in task_indices]
        if unknown:
            raise HermesError(f"{source}: invalid manifest: queries[{modality}] holds {unknown[0]}, not a task index")
        missing = sorted(set(manifest["defaults"].get(modality, {}).values()) - set(query))
        if missing:
            raise HermesError(f"{source}: invalid manifest: queries[{modality}] lacks offered task {missing[0]}")


def task_entry(index: int, target_key: str, dataset: str, modalities: list[str]) -> dict[str, Any]:
    """A manifest task entry, with name, terminology and colour taken from the vocabulary."""
    target = vocabulary.target(target_key)
    terminology = dict(target.terminology)
    if target.anatomic_region:
        terminology["anatomic_region"] = list(target.anatomic_region)
    if target.anatomic_region_modifier:
        terminology["anatomic_region_modifier"] = list(target.anatomic_region_modifier)
    return {
        "index": index,
        "target": target.key,
        "name": target.name,
        "dataset": dataset,
        "modalities": list(modalities),
        "terminology": terminology,
        "color": list(target.color),
    }


def task_terminology_entry(task: Mapping[str, Any]) -> str:
    """Slicer's TerminologyEntry string for a manifest task entry."""
    return vocabulary.terminology_entry(**task["terminology"])


def modality_entries(keys: list[str]) -> list[dict[str, Any]]:
    return [{"key": k, "slot": vocabulary.modality(k).slot, "normalization": default_normalization(k)} for k in keys]


def hermes_r_manifest(*, checkpoint_sha256: str, weights: str) -> dict[str, Any]:
    """The full manifest of the released Hermes-R (71 tasks, 6 modality slots, 1.5 mm, 128^3)."""
    tasks = vocabulary.hermes_r_tasks()
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": "hermes-r",
        "title": "Hermes-R (released weights, 71 tasks)",
        "version": "upstream",
        "description": (
            "Hermes residual U-Net with context priors, trained upstream on 11 public datasets "
            "(AMOS CT/MR, BCV, StructSeg thoracic and head-and-neck OARs, LiTS, KiTS, CHAOS, M&Ms, "
            "brain structures, AutoPET). Imported from the upstream training checkpoint."
        ),
        "license": "See the upstream repository's licence and each training dataset's terms.",
        "intended_use": "Research use only; not a medical device; not for clinical decisions.",
        "demo": False,
        "architecture": HERMES_R.to_manifest(),
        "input": dict(HERMES_R_INPUT),
        "modalities": modality_entries([m.key for m in vocabulary.load_vocabulary().modalities]),
        "tasks": [task_entry(t.index, t.target, t.dataset, list(t.modalities)) for t in tasks],
        "defaults": vocabulary.hermes_r_defaults(),
        "provenance": {
            "source": "upstream Hermes-R training checkpoint, imported by `hermes-segment models import-upstream`",
            "upstream_checkpoint_sha256": checkpoint_sha256,
            "weights": weights,
        },
    }
    validate_manifest(manifest, "Hermes-R manifest")
    return manifest


