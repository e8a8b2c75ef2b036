"""Prepared datasets: the model-space cases of a config, preprocessed once and packed small.

``hermes-segment train CONFIG --prepare DIR`` runs the same preprocessing as training (the cache
of :mod:`.datasets`) and writes, for every dataset of the config, ``DIR/<dataset path>/`` with
``prepared.json`` and two xz-compressed arrays per case. Training with ``--data-root DIR`` then
reads those instead of the images: no SimpleITK, no resampling, the same arrays -- the way to
train on a machine (a GPU server) that has PyTorch but not the imaging stack, as nnU-Net trains
from its preprocessed folder.

Only the cases the config trains on are packed (a dataset's ``splits`` apply), each with the
targets it annotates, so held-out patients never leave the machine they are on. Images are
stored as int16 steps of 1/64 of the normalised intensity (the z-score's standard deviation):
a CT step is about 3-8 HU, below CT noise; labels as uint8/uint16. About 0.16 MB per 128^3
head-and-neck CT at 4 mm, 0.2-0.5 MB per phantom.
"""

from __future__ import annotations

import json
import lzma
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..atomic import atomic_paths, write_text
from ..errors import HermesError
from ..models.manifest import default_normalization

MANIFEST = "prepared.json"
FORMAT_VERSION = 1
# Quantisation of the normalised image: int16 steps of 1/64 standard deviation (range +-512).
IMAGE_STEPS_PER_UNIT = 64.0


def prepare(config: Any, root: Path, out: Path, progress: Callable[[str], None] | None = None) -> list[Path]:
    """Pack every dataset of ``config`` (a TrainingConfig whose dataset paths lie under ``root``)
    into ``out``, mirroring the paths: ``out/<path relative to root>``. Returns the folders written."""
    from .datasets import find_cases, load_case

    if out.exists() and not out.is_dir():
        raise HermesError(f"--prepare {out} is a file; give a new folder (it is created if needed)")
    folders = []
    for spec in config.datasets:
        try:
            relative = spec.path.relative_to(root)
        except ValueError:
            relative = Path(spec.path.name)
        folder, source = (out / relative).resolve(), spec.path.resolve()
        if folder == source or source in folder.parents:  # the packed files would land among the dataset's own
            raise HermesError(f"--prepare {out} would write into the dataset folder {spec.path}; give a new folder "
                              "outside the data (the datasets are never written to)")
        folders.append(out / relative)
    written = []
    for index, (spec, folder) in enumerate(zip(config.datasets, folders)):
        normalization = config.normalization_for(spec.modality)
        cases = [load_case(files, spec, index, config.spacing, config.cache_dir, normalization)
                 for files in find_cases(spec)]
        write_dataset(folder, cases, config.spacing, spec.modality, normalization, progress)
        written.append(folder)
    return written


def is_prepared(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def describe(spacing: Sequence[float], modality: str,
             normalization: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a prepared folder must match to be used: spacing, normalisation, modality."""
    return {"spacing_zyx_mm": [float(s) for s in spacing],
            "normalization": dict(normalization or default_normalization(modality)), "modality": modality}


def write_dataset(folder: Path, cases: Sequence[Any], spacing: Sequence[float], modality: str,
                  normalization: Mapping[str, Any] | None = None,
                  progress: Callable[[str], None] | None = None) -> None:
    """Pack preprocessed ``cases`` (``datasets.Case``, one dataset) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    entries = {}
    for case in cases:
        name = case.files.case
        image = np.clip(np.round(np.asarray(case.image, np.float32) * IMAGE_STEPS_PER_UNIT), -32768, 32767)
        label = np.asarray(case.label)
        for suffix, array in (("image", image.astype("<i2")), ("label", label.astype(label.dtype.newbyteorder("<")))):
            with atomic_paths([folder / f"{name}.{suffix}.xz"]) as (temp,):
                temp.write_bytes(lzma.compress(np.ascontiguousarray(array).tobytes(), preset=6))
        entries[name] = {"shape": list(image.shape), "label_dtype": label.dtype.name,
                         "annotated": list(case.annotated)}
        if progress is not None:
            progress(f"{case.files.dataset} {name}")
    description = {"format_version": FORMAT_VERSION, **describe(spacing, modality, normalization),
                   "image_steps_per_unit": IMAGE_STEPS_PER_UNIT, "cases": entries}
    write_text(folder / MANIFEST, json.dumps(description, indent=1) + "\n")


def read_manifest(folder: Path, spacing: Sequence[float], modality: str, dataset: str,
                  normalization: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``prepared.json`` of ``folder``, checked against the config (one-line HermesError if stale)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise HermesError(f"dataset '{dataset}': cannot read {folder / MANIFEST} ({error}); prepare it again") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise HermesError(f"dataset '{dataset}': {folder} was prepared by another version; prepare it again "
                          "with `hermes-segment train CONFIG --prepare DIR`")
    expected = describe(spacing, modality, normalization)
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise HermesError(f"dataset '{dataset}': {folder} was prepared with {key} {manifest.get(key)}, the config "
                              f"needs {value}; prepare it again with this config")
    return manifest


def read_case(folder: Path, name: str, entry: dict[str, Any], steps_per_unit: float) -> tuple[np.ndarray, np.ndarray]:
    """(image float32 (D, H, W) normalised, label (D, H, W)) of one prepared case."""
    shape = tuple(entry["shape"])
    image = np.frombuffer(lzma.decompress((folder / f"{name}.image.xz").read_bytes()), "<i2").reshape(shape)
    label = np.frombuffer(lzma.decompress((folder / f"{name}.label.xz").read_bytes()),
                          np.dtype(entry["label_dtype"]).newbyteorder("<")).reshape(shape)
    return image.astype(np.float32) / np.float32(steps_per_unit), label.astype(entry["label_dtype"])
