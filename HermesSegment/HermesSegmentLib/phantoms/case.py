"""One phantom case: anatomy rendered on a fine grid, appearance, storage; and its truth masks."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from ..errors import HermesError
from .anatomy import render_anatomy
from .appearance import apply_modality, block_mean, ct_phase, tissue_lut
from .atlas import CONTAINS, LABELS, MODALITIES, REGIONS, Canvas, rotation, widen
from .storage import STORAGE_FIXED, draw_spacing, draw_storage, oblique, to_storage

DEFAULT_MAX_VOXELS = 3_000_000
FINE_MAX_VOXELS = 8_000_000  # render grid cap (also <= 8x the stored cap); bounds time and memory


def generate_case(seed: int, modality: str, *, region: str = "torso",
                  spacing: Sequence[float] | None = None, orientation: str | None = None,
                  max_voxels: int = DEFAULT_MAX_VOXELS,
                  supersample: bool = True, randomization: float = 0.0) -> tuple[sitk.Image, sitk.Image, dict]:
    """Generates one phantom case.

    Args:
        seed: any int; the anatomy depends on it alone, the appearance and geometry on (seed,
            modality). Same arguments -> byte-identical arrays.
        modality: one of :data:`MODALITIES` ("CT", "MR-T1", "MR-T2", "PET").
        region: z-extent to cover, a key of :data:`REGIONS` ("torso" holds every target).
        spacing: stored spacing (x, y, z) in mm of the canonical axes; drawn per case when None.
        orientation: "LPS", "RAS", "permuted" or "oblique"; drawn per case when None.
        max_voxels: cap on stored voxels; a drawn or given spacing is coarsened uniformly to meet
            it (so the default case takes ~1-3 s on one core).
        supersample: render 3x finer along axes coarser than ~1.6 mm and average down
            (partial volume); False renders at the stored resolution (faster).
        randomization: 0 (the standard phantoms) to 1: domain randomisation in the spirit of
            SynthSeg (Billot et al. 2023) -- patient size, pose and organ size, position and
            shape vary 2.5x as much, the field of view may cut the region or reach up to 180 mm
            beyond it, and every tissue's intensity, the contrast, noise, blur and bias field vary
            far more (see :func:`appearance.tissue_lut`, :func:`appearance.apply_modality`).
            Training on it keeps a model from learning one generator's look.

    Returns:
        (image, labelmap, truth_info): image is int16 HU for CT, float32 for MR (a.u., ~0-2000)
        and PET (SUV); labelmap is uint8 with :data:`LABELS` values on the same geometry;
        truth_info = {"labels": {target: value} for the targets present, "modality", "region",
        "spacing" (stored, x/y/z of the image axes, mm), "size", "orientation", "seed",
        "ct_phase" (CT only), "volumes_ml": {target: mL}}.
    """
    _check_arguments(modality, region, orientation, max_voxels, randomization)
    spread = 1.0 + 1.5 * randomization
    m_index = MODALITIES.index(modality)
    anatomy_rng = np.random.default_rng([seed & 0xFFFFFFFF, 0])
    geo_rng = np.random.default_rng([seed & 0xFFFFFFFF, 1, m_index])
    look_rng = np.random.default_rng([seed & 0xFFFFFFFF, 2, m_index])

    # Patient size and pose: atlas -> physical p = m q + t.
    scale = np.array([anatomy_rng.uniform(*widen(0.88, 1.12, spread))] * 2
                     + [anatomy_rng.uniform(*widen(0.92, 1.08, spread))])
    scale[1] *= anatomy_rng.uniform(*widen(0.93, 1.07, spread))
    m = rotation(anatomy_rng, (3.0 * spread, 3.0 * spread, 6.0 * spread)) @ np.diag(scale)
    t = anatomy_rng.uniform(-15 * spread, 15 * spread, 3)

    # Field of view: square in-plane, long axis covering the region with random margins.
    sp = np.asarray(spacing, float) if spacing is not None else draw_spacing(geo_rng, modality)
    if sp.shape != (3,) or np.any(sp <= 0):
        raise HermesError(f"spacing must be three positive numbers (x, y, z mm), got {spacing!r}")
    fov_xy = float(np.clip(2 * 165.0 * scale[0] * geo_rng.uniform(1.08, 1.3), 300.0, 480.0))
    z0, z1 = REGIONS[region]
    # Negative: the field of view cuts into the region. Randomised, it may also reach far beyond it
    # (an abdominal CT that holds the pelvis, as most clinical ones do): without that, a CT model
    # never sees a pelvis and takes pelvic structures for a kidney (README, "What the demo model is").
    margin = (10.0 - 70.0 * randomization, 40.0 + 140.0 * randomization)
    zlo = z0 * scale[2] + t[2] - geo_rng.uniform(*margin)
    zhi = z1 * scale[2] + t[2] + geo_rng.uniform(*margin)
    extent = np.array([fov_xy, fov_xy, zhi - zlo])
    center = np.array([t[0] + geo_rng.uniform(-15, 15), t[1] + geo_rng.uniform(0, 25), (zlo + zhi) / 2])
    sp, n, k = _grids(extent, sp, max_voxels, supersample)
    fine_sp = sp / k
    origin_out = center - sp * (n - 1) / 2  # centre of the first stored voxel
    origin_fine = origin_out - fine_sp * (k - 1) / 2

    cv = Canvas(origin_fine, fine_sp, n * k, m, t, spread)
    render_anatomy(cv, anatomy_rng, modality)

    phase, overrides = ct_phase(look_rng) if modality == "CT" else ("", {})
    lut = tissue_lut(look_rng, modality, overrides, randomization)
    kz, ky, kx = int(k[2]), int(k[1]), int(k[0])
    centre = (slice(kz // 2, None, kz), slice(ky // 2, None, ky), slice(kx // 2, None, kx))
    labels = np.ascontiguousarray(cv.label[centre])
    tissue_c = np.ascontiguousarray(cv.tissue[centre])
    intensity = block_mean(lut[cv.tissue], (kz, ky, kx))
    del cv
    intensity = apply_modality(intensity, tissue_c, look_rng, modality, sp[::-1].copy(), randomization)

    kind, perm, flips = draw_storage(geo_rng) if orientation is None else STORAGE_FIXED[orientation]
    dtype = np.int16 if modality == "CT" else np.float32
    if modality == "CT":
        intensity = np.round(intensity)
    image = to_storage(intensity.astype(dtype), origin_out, sp, perm, flips)
    labelmap = to_storage(labels, origin_out, sp, perm, flips)
    if kind == "oblique":
        image, labelmap = oblique(image, labelmap, geo_rng, -1000.0 if modality == "CT" else 0.0)

    truth = _truth_info(labelmap)
    info = {"labels": truth["labels"], "modality": modality, "region": region, "spacing": truth["spacing"],
            "size": truth["size"], "orientation": kind, "seed": int(seed), "randomization": float(randomization),
            "volumes_ml": truth["volumes_ml"]}
    if modality == "CT":
        info["ct_phase"] = phase
    return image, labelmap, info


def _check_arguments(modality: str, region: str, orientation: str | None, max_voxels: int,
                     randomization: float) -> None:
    if modality not in MODALITIES:
        raise HermesError(f"unknown phantom modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    if region not in REGIONS:
        raise HermesError(f"unknown phantom region {region!r}; choose one of {', '.join(REGIONS)}")
    if orientation is not None and orientation not in STORAGE_FIXED:
        raise HermesError(f"unknown orientation {orientation!r}; choose LPS, RAS, permuted or oblique")
    if max_voxels < 1000:
        raise HermesError(f"max_voxels={max_voxels} is too small; use at least 1000")
    if not 0.0 <= randomization <= 1.0:
        raise HermesError(f"randomization must be between 0 and 1, got {randomization}")


def _grids(extent: np.ndarray, sp: np.ndarray, max_voxels: int,
           supersample: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(stored spacing, stored size, supersampling factor per axis), all (x, y, z), for a field of
    view of ``extent`` mm drawn at spacing ``sp``."""
    n = np.maximum(np.round(extent / sp).astype(int), 8)
    if n.prod() > max_voxels:
        # Coarsen uniformly (keeps the anisotropy), but never past 10 mm slices: then in-plane only.
        sp = sp * (n.prod() / max_voxels) ** (1 / 3)
        if sp[2] > 10.0:
            sp[:2] *= math.sqrt(sp[2] / 10.0)
            sp[2] = 10.0
        n = np.maximum(np.floor(extent / sp).astype(int), 8)
    k = np.where(sp > 1.6, 3, 1) if supersample else np.ones(3, int)
    while (n * k).prod() > min(FINE_MAX_VOXELS, 8 * max_voxels) and k.max() > 1:
        # give up supersampling on the finest axis first: thick slices gain most from it
        k[min((a for a in range(3) if k[a] > 1), key=lambda a: sp[a])] = 1
    return sp, n, k


def _truth_info(labelmap: sitk.Image) -> dict:
    """The targets present (label values), the stored spacing and size, and each target's volume."""
    lab_arr = sitk.GetArrayViewFromImage(labelmap)
    voxel_ml = float(np.prod(labelmap.GetSpacing())) / 1000.0
    counts = np.bincount(lab_arr.ravel(), minlength=max(LABELS.values()) + 1)
    present = {key: v for key, v in LABELS.items() if counts[v] > 0}
    masks = target_masks(lab_arr, present)
    return {
        "labels": present,
        "spacing": [float(s) for s in labelmap.GetSpacing()],
        "size": [int(s) for s in labelmap.GetSize()],
        "volumes_ml": {key: round(float(mk.sum()) * voxel_ml, 2) for key, mk in masks.items()},
    }


def target_masks(labelmap_array: np.ndarray, labels: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Binary truth per target from a one-label-per-voxel map.

    Args:
        labelmap_array: integer label array (any shape, e.g. [z, y, x]).
        labels: {target key: label value} (a case's ``truth_info["labels"]`` or a dataset's
            mapping).
    Returns:
        {target key: bool array of the same shape}; a container target (:data:`CONTAINS`, e.g.
        liver) includes the voxels of the targets it contains (liver_tumor) when they are listed.
    """
    masks = {key: labelmap_array == value for key, value in labels.items()}
    for outer, inner in CONTAINS.items():
        if outer in masks:
            for key in inner:
                if key in masks:
                    masks[outer] = masks[outer] | masks[key]
    return masks
