"""Writing phantoms: one case with its truth, or partially labelled pseudo-datasets (nnU-Net / MSD layout)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import SimpleITK as sitk
import yaml

from ..atomic import atomic_paths, write_text
from ..errors import HermesError
from .atlas import CONTAINS, LABELS
from .case import DEFAULT_MAX_VOXELS, generate_case, target_masks

#: Pseudo-datasets: (id, name, modality, region, annotated targets in label-value order).
PSEUDO_DATASETS: tuple[tuple[int, str, str, str, tuple[str, ...]], ...] = (
    (501, "PhantomCT_Abdomen", "CT", "abdomen",
     ("liver", "liver_tumor", "spleen", "kidney_left", "kidney_right", "stomach", "aorta")),
    (502, "PhantomCT_Thorax", "CT", "thorax",
     ("lung_left", "lung_right", "heart", "aorta", "vertebrae")),
    (503, "PhantomMR_T1", "MR-T1", "abdomen", ("liver", "spleen", "kidney_left", "kidney_right")),
    (504, "PhantomMR_T2", "MR-T2", "abdomen_pelvis",
     ("liver", "spleen", "kidney_left", "kidney_right", "urinary_bladder", "stomach")),
    (505, "PhantomPET", "PET", "torso",
     ("fdg_avid_lesion", "liver", "kidney_left", "kidney_right", "urinary_bladder", "heart")),
)


def _write_image(image: sitk.Image, path: Path) -> None:
    with atomic_paths([path]) as (temp,):
        sitk.WriteImage(image, str(temp), useCompression=True)


def dataset_labelmap(labelmap_array: np.ndarray, targets: Sequence[str]) -> np.ndarray:
    """Relabels a case for a dataset annotating only ``targets`` (value i+1 for targets[i]).

    Unannotated structures become background 0. A container target (liver) is painted before the
    targets it contains, so when liver_tumor is not annotated the liver label includes the tumour
    (truth = liver ∪ tumour), and when it is, the tumour keeps its own label.
    """
    masks = target_masks(labelmap_array, LABELS)
    out = np.zeros(labelmap_array.shape, np.uint8)
    for i, key in sorted(enumerate(targets), key=lambda it: it[1] not in CONTAINS):
        out[masks[key]] = i + 1
    return out


def write_single_case(out_dir: str | Path, name: str, modality: str, *, seed: int = 0,
                      **case_options) -> tuple[Path, Path, Path]:
    """Writes one case as ``NAME.nii.gz``, ``NAME_truth.nii.gz`` (label map) and ``NAME_truth.json``.

    ``case_options`` go to :func:`generate_case`. Returns the three paths.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    image, labelmap, info = generate_case(seed, modality, **case_options)
    paths = (out / f"{name}.nii.gz", out / f"{name}_truth.nii.gz", out / f"{name}_truth.json")
    _write_image(image, paths[0])
    _write_image(labelmap, paths[1])
    write_text(paths[2], json.dumps(info, indent=2) + "\n")
    return paths


def write_pseudo_datasets(out_dir: str | Path, cases_per_dataset: int = 8, seed: int = 0, *,
                          datasets: Iterable[str] | None = None,
                          max_voxels: int = DEFAULT_MAX_VOXELS, randomization: float = 0.0,
                          progress: Callable[[str], None] | None = None) -> list[Path]:
    """Writes the partially labelled pseudo-datasets (nnU-Net / MSD layout) and phantom_config.yaml.

    Each dataset (:data:`PSEUDO_DATASETS`) is one modality and annotates only some targets; the
    others are background. Layout per dataset: ``DatasetNNN_Name/imagesTr/case_XXXX_0000.nii.gz``,
    ``labelsTr/case_XXXX.nii.gz``, ``dataset.json`` (nnU-Net v2 keys plus a "hermes" block
    {"modality", "targets": {value: target key}, "cases": [per-case truth info]}).

    Args:
        out_dir: created if missing.
        cases_per_dataset: cases in each dataset (>= 1).
        seed: base seed; case i of dataset NNN uses a seed derived from (seed, NNN, i), so the
            datasets are different patients.
        datasets: names to write (default all).
        max_voxels: per-case cap, see :func:`generate_case`.
        randomization: domain randomisation of every case (0-1), see :func:`generate_case`.
        progress: called with a short message after each case is written.
    Returns:
        The dataset folders, then the config file path.
    """
    if cases_per_dataset < 1:
        raise HermesError(f"cases_per_dataset must be at least 1, got {cases_per_dataset}")
    known = {spec[1]: spec for spec in PSEUDO_DATASETS}
    names = list(known) if datasets is None else list(datasets)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise HermesError(f"unknown pseudo-dataset {unknown[0]!r}; choose from {', '.join(known)}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    config = []
    for name in names:
        ds_id, _, modality, region, targets = known[name]
        folder = root / f"Dataset{ds_id:03d}_{name}"
        (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
        (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
        cases = []
        for i in range(cases_per_dataset):
            case_seed = int(np.random.SeedSequence([seed & 0xFFFFFFFF, ds_id, i]).generate_state(1)[0])
            image, labelmap, info = generate_case(case_seed, modality, region=region, max_voxels=max_voxels,
                                                  randomization=randomization)
            relabel = dataset_labelmap(sitk.GetArrayViewFromImage(labelmap), targets)
            lab = sitk.GetImageFromArray(relabel)
            lab.CopyInformation(labelmap)
            case = f"case_{i:04d}"
            _write_image(image, folder / "imagesTr" / f"{case}_0000.nii.gz")
            _write_image(lab, folder / "labelsTr" / f"{case}.nii.gz")
            cases.append({"case": case, **{k: info[k] for k in ("seed", "spacing", "size", "orientation")},
                          **({"ct_phase": info["ct_phase"]} if "ct_phase" in info else {})})
            if progress is not None:
                progress(f"{name} {case}")
        value_of = {key: i + 1 for i, key in enumerate(targets)}
        meta = {
            "name": name,
            "description": f"HermesSegment synthetic phantoms ({modality}); not real patients",
            "channel_names": {"0": modality},
            "labels": {"background": 0, **value_of},
            "numTraining": cases_per_dataset,
            "file_ending": ".nii.gz",
            "hermes": {"modality": modality, "targets": {str(v): k for k, v in value_of.items()},
                       "region": region, "generator_seed": seed, "randomization": randomization, "cases": cases},
        }
        write_text(folder / "dataset.json", json.dumps(meta, indent=2) + "\n")
        config.append({"name": name, "path": folder.name, "modality": modality,
                       "labels": {v: k for k, v in value_of.items()}, "weight": 1.0})
        written.append(folder)
    cfg_path = root / "phantom_config.yaml"
    write_text(cfg_path, yaml.safe_dump({"datasets": config}, sort_keys=False, default_flow_style=None, width=1000))
    written.append(cfg_path)
    return written
