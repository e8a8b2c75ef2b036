"""Dataset ingestion: nnU-Net / MSD folders -> preprocessed model-space cases, cached on disk.

Per-case partial labels: a dataset may hold ``cases.json`` next to its ``dataset.json``, saying per
case which structures were annotated (``{"pt_1": {"annotated": ["brainstem", ...], "split":
"train"}, ...}``). A structure missing from a case's list is *unknown* there, not background: the
sampler never asks that case for it and validation never scores it. Names are the dataset's own
label names (``dataset.json`` ``labels``) or target keys of the config. The optional ``split``
lets a config keep only some cases (``splits:`` in the dataset's config entry).

Images go through :func:`preprocess.to_model_space` -- the very function inference uses -- so the
network is trained on exactly what it will see. Label maps are resampled onto the same
model-space grid (the crop of the full grid that ``to_model_space`` returns) with nearest
neighbour. Each case is preprocessed once; the result is cached as two ``.npy`` files keyed by the
source files' size and modification time and by the preprocessing parameters, and memory-mapped
when used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np

from ..atomic import atomic_paths
from ..errors import HermesError
from ..models.manifest import default_normalization
from . import prepared
from .config import DatasetSpec, TrainingConfig

if TYPE_CHECKING:  # SimpleITK is imported where images are read: prepared datasets need none
    import SimpleITK as sitk

    from ..preprocess import ModelSpaceImage

# Bumped whenever the cached arrays would change for the same inputs and parameters.
_CACHE_VERSION = 1


CASES_FILE = "cases.json"


@dataclass(frozen=True)
class CaseFiles:
    """One training case on disk: its image (channel 0) and its label map. ``annotated``: the
    config targets annotated in this case (all of the dataset's unless ``cases.json`` says less)."""

    dataset: str
    case: str
    image: Path
    label: Path
    annotated: tuple[str, ...]


@dataclass
class Case:
    """A preprocessed case. ``image`` float32 (D, H, W) normalised; ``label`` uint8/uint16 (D, H, W)
    holding the dataset's label values on the same grid (both usually memory-mapped)."""

    files: CaseFiles
    dataset_index: int
    image: np.ndarray
    label: np.ndarray

    @property
    def annotated(self) -> tuple[str, ...]:
        return self.files.annotated


def _strip_ending(name: str) -> tuple[str, str] | None:
    from ..read import IMAGE_SUFFIXES  # here: the reader imports SimpleITK, which prepared datasets need not have

    for ending in IMAGE_SUFFIXES:
        if name.endswith(ending):
            return name[: -len(ending)], ending
    return None


def find_cases(spec: DatasetSpec) -> list[CaseFiles]:
    """The (image, label) pairs of a dataset, sorted by case id, with their annotated targets.

    nnU-Net v2 names images ``CASE_0000.nii.gz`` (channel 0; other channels are ignored) and labels
    ``CASE.nii.gz``; MSD names both ``CASE.nii.gz``. An image without a label is an error (a
    half-copied dataset), so is an empty dataset. With a ``cases.json`` (module docstring), cases
    outside the config's ``splits`` and cases annotating none of the config's targets are left out.
    """
    if prepared.is_prepared(spec.path):
        return _prepared_cases(spec)
    annotations = read_case_annotations(spec)
    labels = dict(_files_by_stem(spec.path / "labelsTr"))
    cases = []
    for stem, path in _images_by_case(spec.path / "imagesTr"):
        if stem not in labels:
            raise HermesError(f"dataset '{spec.name}': image {path.name} has no label map {stem}.* in labelsTr/; add "
                              "it or remove the image")
        annotated = _annotated_in(spec, stem, annotations)
        if annotated:  # a case outside the kept splits, or annotating none of the targets, is left out
            cases.append(CaseFiles(spec.name, stem, path, labels[stem], annotated))
    if not cases:
        if annotations is not None and spec.splits:
            raise HermesError(f"dataset '{spec.name}': no case of split {', '.join(spec.splits)} in {CASES_FILE} "
                              f"annotates {', '.join(spec.targets)}; check 'splits' and 'labels'")
        raise HermesError(f"dataset '{spec.name}': no images found in {spec.path / 'imagesTr'} (expected "
                          "NAME_0000.nii.gz or NAME.nii.gz)")
    return cases


def _files_by_stem(folder: Path) -> list[tuple[str, Path]]:
    """(name without its image ending, path) of the image files in ``folder``, sorted; hidden files skipped."""
    found = []
    for path in sorted(folder.iterdir()):
        parts = _strip_ending(path.name)
        if parts and not path.name.startswith("."):
            found.append((parts[0], path))
    return found


def _images_by_case(folder: Path) -> list[tuple[str, Path]]:
    """(case id, channel-0 image) of an imagesTr folder: nnU-Net's CASE_0000 or MSD's CASE."""
    images = []
    for stem, path in _files_by_stem(folder):
        if stem[-5:-4] == "_" and stem[-4:].isdigit():
            if stem[-4:] != "0000":
                continue  # another channel of a multi-channel case: Hermes takes one channel
            stem = stem[:-5]
        images.append((stem, path))
    return images


def _annotated_in(spec: DatasetSpec, case: str,
                  annotations: dict[str, tuple[str | None, tuple[str, ...]]] | None) -> tuple[str, ...]:
    """The config's targets annotated in ``case`` (every one without a cases.json); empty when the
    case's split is not kept."""
    if annotations is None:
        return spec.targets
    if case not in annotations:
        raise HermesError(f"dataset '{spec.name}': case {case} is missing from {CASES_FILE}; list it with its "
                          "'annotated' structures or remove the case")
    split, annotated = annotations[case]
    return () if spec.splits and split not in spec.splits else annotated


def _prepared_cases(spec: DatasetSpec) -> list[CaseFiles]:
    """The cases of a prepared dataset folder (see :mod:`.prepared`), as packed."""
    entries = json.loads((spec.path / prepared.MANIFEST).read_text(encoding="utf-8")).get("cases", {})
    cases = [CaseFiles(spec.name, name, spec.path / f"{name}.image.xz", spec.path / f"{name}.label.xz",
                       tuple(t for t in entry["annotated"] if t in spec.targets))
             for name, entry in sorted(entries.items())]
    cases = [c for c in cases if c.annotated]
    if not cases:
        raise HermesError(f"dataset '{spec.name}': the prepared folder {spec.path} holds no case annotating "
                          f"{', '.join(spec.targets)}; prepare it again with this config")
    return cases


def read_case_annotations(spec: DatasetSpec) -> dict[str, tuple[str | None, tuple[str, ...]]] | None:
    """``cases.json`` of a dataset as {case: (split or None, annotated config targets)}; None when
    the dataset has no such file (every case annotates every target of the config).

    A config target counts as annotated in a case only when every label value that makes it up is
    annotated there (``kidney`` = left + right needs both). Raises HermesError (one line) for a
    malformed file or a structure name neither ``dataset.json`` nor the vocabulary knows.
    """
    path = spec.path / CASES_FILE
    if not path.is_file():
        return None
    where = f"dataset '{spec.name}': {path}"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise HermesError(f"{where}: not valid JSON ({error}); fix or remove the file") from None
    if not isinstance(raw, dict):
        raise HermesError(f'{where}: expected {{"CASE": {{"annotated": [names], "split": NAME}}, ...}}')
    value_of = _label_values_by_name(spec)
    annotations = {}
    for case, entry in raw.items():
        names = entry.get("annotated") if isinstance(entry, dict) else None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise HermesError(f"{where}: case {case} needs an 'annotated' list of structure names")
        split = entry.get("split")
        values = set()
        for name in names:
            if name not in value_of:
                raise HermesError(f"{where}: case {case} names '{name}', which is neither a label of dataset.json "
                                  f"nor a target of the config's labels; known: {', '.join(sorted(value_of))}")
            values |= value_of[name]
        annotated = tuple(t for t in spec.targets
                          if all(v in values for v, keys in spec.labels.items() if t in keys))
        annotations[str(case)] = (None if split is None else str(split), annotated)
    return annotations


def _label_values_by_name(spec: DatasetSpec) -> dict[str, set[int]]:
    """Structure name -> the label values it stands for: ``dataset.json``'s label names (nnU-Net v2
    ``{name: value}`` or MSD ``{value: name}``), and every config target key (its values)."""
    by_name: dict[str, set[int]] = {}
    for target in spec.targets:
        by_name[target] = {v for v, keys in spec.labels.items() if target in keys}
    description = spec.path / "dataset.json"
    if description.is_file():
        try:
            labels = json.loads(description.read_text(encoding="utf-8")).get("labels", {})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            labels = {}
        for first, second in labels.items() if isinstance(labels, dict) else ():
            name, value = (first, second) if isinstance(second, int) else (second, first)
            try:
                by_name[str(name)] = {int(value)}
            except (TypeError, ValueError):
                continue  # nnU-Net region labels (lists) are not per-case structures
    return by_name


def split_cases(cases: Sequence[CaseFiles], val_fraction: float, seed: int) -> tuple[list[CaseFiles], list[CaseFiles]]:
    """Deterministic (train, validation) split of one dataset: at least one of each when possible."""
    order = np.random.default_rng([seed, 7]).permutation(len(cases))
    n_val = int(round(val_fraction * len(cases)))
    if val_fraction > 0 and len(cases) >= 2:
        n_val = min(max(n_val, 1), len(cases) - 1)
    val = sorted(order[len(cases) - n_val:]) if n_val else []
    train = sorted(order[: len(cases) - n_val])
    return [cases[i] for i in train], [cases[i] for i in val]


def _cache_key(files: CaseFiles, spec: DatasetSpec, spacing: Sequence[float], normalization: Mapping[str, Any]) -> str:
    parts = [_CACHE_VERSION, list(spacing), dict(normalization), spec.modality]
    for path in (files.image, files.label):
        stat = path.stat()
        parts.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def preprocess_case(files: CaseFiles, spec: DatasetSpec, spacing: Sequence[float],
                    normalization: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (D, H, W) normalised as the model's manifest says -- ``normalization``,
    default the modality's default -- and label (D, H, W)) on the model-space body crop."""
    import SimpleITK as sitk

    from ..preprocess import to_model_space
    from ..read import read_image

    image = read_image(files.image)
    label = read_image(files.label)
    model = to_model_space(image, spacing_zyx=spacing,
                           normalization=dict(normalization or default_normalization(spec.modality)),
                           modality=spec.modality)
    label_array = resample_label(label, model)
    present = set(np.unique(label_array).tolist()) | set(np.unique(sitk.GetArrayViewFromImage(label)).tolist())
    unknown = sorted(v for v in present if v != 0 and v not in spec.labels)
    if unknown:
        raise HermesError(f"dataset '{spec.name}' case {files.case}: label value {unknown[0]} is not in the config's "
                          f"labels {sorted(spec.labels)}; map it to a target or relabel it to 0")
    return model.array, label_array


def resample_label(label: sitk.Image, model: ModelSpaceImage) -> np.ndarray:
    """A label map (any geometry) onto ``model``'s crop grid with nearest neighbour -> (D, H, W)."""
    import SimpleITK as sitk

    if label.GetNumberOfComponentsPerPixel() != 1:
        raise HermesError("label maps must be scalar images (one label value per voxel)")
    reference = model.crop_image(np.zeros(model.array.shape, np.uint8))
    values = sitk.GetArrayViewFromImage(label)
    if values.min() < 0 or values.max() > 65535:
        raise HermesError(f"label values must be integers 0..65535, found {values.min()}..{values.max()}")
    pixel = sitk.sitkUInt8 if values.max() < 256 else sitk.sitkUInt16
    resampled = sitk.Resample(sitk.Cast(label, pixel), reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, pixel)
    return sitk.GetArrayFromImage(resampled)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_paths([path]) as (temp,):  # the temporary name keeps the .npy ending np.save wants
        np.save(temp, array)


def load_case(files: CaseFiles, spec: DatasetSpec, dataset_index: int, spacing: Sequence[float], cache_dir: Path,
              normalization: Mapping[str, Any] | None = None) -> Case:
    """A preprocessed case from the cache, preprocessing it first when missing or stale (or from a
    prepared folder, in memory)."""
    if prepared.is_prepared(spec.path):
        manifest = prepared.read_manifest(spec.path, spacing, spec.modality, spec.name, normalization)
        image, label = prepared.read_case(spec.path, files.case, manifest["cases"][files.case],
                                          manifest["image_steps_per_unit"])
        return Case(files, dataset_index, image, label)
    normalization = normalization or default_normalization(spec.modality)
    key = _cache_key(files, spec, spacing, normalization)
    folder = cache_dir / spec.name
    image_path, label_path = folder / f"{files.case}.{key}.image.npy", folder / f"{files.case}.{key}.label.npy"
    if not (image_path.is_file() and label_path.is_file()):
        image, label = preprocess_case(files, spec, spacing, normalization)
        folder.mkdir(parents=True, exist_ok=True)
        _save_npy(label_path, label)
        _save_npy(image_path, image)  # written last: its presence marks a complete entry
    return Case(files, dataset_index, np.load(image_path, mmap_mode="r"), np.load(label_path, mmap_mode="r"))


def load_cases(config: TrainingConfig, split: str, progress: Callable[[str], None] | None = None, *,
               normalizations: Mapping[str, Mapping[str, Any]] | None = None) -> list[Case]:
    """All cases of one split ("train" or "val") of every dataset, preprocessed and cached.

    ``normalizations``: {modality: manifest normalisation entry} of the model being trained; a
    modality it lacks gets the config's (``TrainingConfig.normalization_for``).
    """
    if split not in ("train", "val"):
        raise ValueError(split)
    cases = []
    for index, spec in enumerate(config.datasets):
        train, val = split_cases(find_cases(spec), config.val_fraction, config.seed)
        for files in train if split == "train" else val:
            normalization = (normalizations or {}).get(spec.modality) or config.normalization_for(spec.modality)
            cases.append(load_case(files, spec, index, config.spacing, config.cache_dir, normalization))
            if progress is not None:
                progress(f"{spec.name} {files.case}")
    return cases


def target_masks(label: np.ndarray, spec: DatasetSpec, targets: Sequence[str]) -> np.ndarray:
    """Binary masks (len(targets), *label.shape) uint8 of ``targets`` from a label array.

    A label value may belong to several targets (e.g. a tumour inside the liver is both).
    """
    table = np.zeros((int(max(spec.labels)) + 1, len(targets)), np.uint8)
    for value, keys in spec.labels.items():
        for key in keys:
            if key in targets:
                table[value, targets.index(key)] = 1
    return np.moveaxis(table[np.minimum(label, table.shape[0] - 1)], -1, 0)
