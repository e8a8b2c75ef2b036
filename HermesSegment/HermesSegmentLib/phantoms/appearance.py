"""Intensities per tissue and modality, contrast phase, texture, blur, bias field and noise."""

from __future__ import annotations

import math
from typing import Mapping, Sequence, Union

import numpy as np
from scipy import ndimage

from .atlas import TISSUE_ID, TISSUES

Floats = Union[Sequence[float], np.ndarray]  # per-axis values: a list or an array

# (mean, relative per-case jitter). CT values are for the portal-venous phase; ct_phase adjusts.
APPEARANCE: dict[str, dict[str, tuple[float, float]]] = {
    "CT": {
        "air": (-1000, 0), "lung": (-850, 0.03), "fat": (-100, 0.1), "muscle": (50, 0.1),
        "skin": (40, 0.1), "bowel": (30, 0.3), "gas": (-950, 0.02), "liver": (95, 0.12),
        "spleen": (100, 0.1), "kidney_cortex": (160, 0.15), "kidney_medulla": (110, 0.15),
        "stomach_wall": (70, 0.15), "stomach_content": (15, 0.5), "artery": (150, 0.15),
        "vein": (140, 0.15), "myocardium": (90, 0.15), "heart_blood": (150, 0.15),
        "cortical_bone": (1000, 0.15), "marrow": (300, 0.2), "disc": (80, 0.1), "csf": (10, 0.3),
        "urine": (10, 0.5), "bladder_wall": (50, 0.1), "tumor": (45, 0.2), "pet_lesion": (40, 0.1),
        "table": (150, 0.3),
    },
    "MR-T1": {
        "air": (0, 0), "lung": (30, 0.3), "fat": (1500, 0.08), "muscle": (500, 0.1),
        "skin": (700, 0.1), "bowel": (450, 0.2), "gas": (5, 0), "liver": (720, 0.08),
        "spleen": (450, 0.1), "kidney_cortex": (600, 0.1), "kidney_medulla": (380, 0.1),
        "stomach_wall": (520, 0.1), "stomach_content": (200, 0.4), "artery": (120, 0.3),
        "vein": (160, 0.3), "myocardium": (520, 0.1), "heart_blood": (150, 0.3),
        "cortical_bone": (50, 0.3), "marrow": (950, 0.15), "disc": (380, 0.1), "csf": (150, 0.2),
        "urine": (150, 0.2), "bladder_wall": (480, 0.1), "tumor": (380, 0.15),
        "pet_lesion": (400, 0.1), "table": (0, 0),
    },
    "MR-T2": {
        "air": (0, 0), "lung": (30, 0.3), "fat": (1100, 0.1), "muscle": (300, 0.1),
        "skin": (600, 0.1), "bowel": (700, 0.25), "gas": (5, 0), "liver": (350, 0.1),
        "spleen": (800, 0.1), "kidney_cortex": (900, 0.1), "kidney_medulla": (1150, 0.1),
        "stomach_wall": (450, 0.1), "stomach_content": (1500, 0.2), "artery": (80, 0.3),
        "vein": (120, 0.3), "myocardium": (350, 0.1), "heart_blood": (200, 0.3),
        "cortical_bone": (40, 0.3), "marrow": (700, 0.15), "disc": (1200, 0.1), "csf": (1800, 0.08),
        "urine": (1900, 0.06), "bladder_wall": (400, 0.1), "tumor": (950, 0.15),
        "pet_lesion": (700, 0.1), "table": (0, 0),
    },
    "PET": {
        "air": (0, 0), "lung": (0.4, 0.2), "fat": (0.3, 0.2), "muscle": (0.7, 0.2),
        "skin": (0.8, 0.2), "bowel": (1.5, 0.3), "gas": (0.05, 0), "liver": (2.2, 0.15),
        "spleen": (1.8, 0.15), "kidney_cortex": (5.0, 0.3), "kidney_medulla": (9.0, 0.4),
        "stomach_wall": (2.2, 0.3), "stomach_content": (1.2, 0.3), "artery": (1.7, 0.15),
        "vein": (1.6, 0.15), "myocardium": (4.0, 0.8), "heart_blood": (1.7, 0.15),
        "cortical_bone": (0.6, 0.2), "marrow": (1.5, 0.2), "disc": (0.6, 0.2), "csf": (0.5, 0.2),
        "urine": (25.0, 0.4), "bladder_wall": (3.0, 0.3), "tumor": (2.5, 0.3),
        "pet_lesion": (10.0, 0.5), "table": (0, 0),
    },
}


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], cell: Floats) -> np.ndarray:
    """Smooth unit-variance-ish noise (float32, ``shape``) with feature size ``cell`` voxels per axis.

    Random values on a lattice ``cell`` voxels apart, linearly interpolated one axis at a time with
    small interpolation matrices (BLAS), which is several times faster than ndimage.zoom.
    """
    coarse_shape = [max(2, int(math.ceil(n / max(c, 1e-3))) + 2) for n, c in zip(shape, cell)]
    out = rng.normal(size=coarse_shape).astype(np.float32)
    for axis, (n, m) in enumerate(zip(shape, coarse_shape)):
        pos = np.linspace(0.0, m - 1.0, n, dtype=np.float32) * np.float32((m - 2.0) / max(m - 1.0, 1.0)) + 0.5
        w = np.maximum(0.0, 1.0 - np.abs(pos[:, None] - np.arange(m, dtype=np.float32)[None, :]))
        out = np.moveaxis(np.tensordot(w, np.moveaxis(out, axis, 0), axes=1), 0, axis)
    return np.ascontiguousarray(out, dtype=np.float32)


def coarse_noise(rng: np.random.Generator, shape: Sequence[int], spacing_zyx: Floats,
                  feature_mm: float) -> np.ndarray:
    """Smooth noise with ~feature_mm features, computed on a ~3 mm grid and repeated up to ``shape``.

    Rendering it directly on the fine grid costs seconds; the blocks are far below the feature
    size, so the pattern is the same.
    """
    step = [max(1, int(3.0 // s)) for s in spacing_zyx]
    small = [int(math.ceil(n / k)) for n, k in zip(shape, step)]
    noise = smooth_noise(rng, small, [feature_mm / (s * k) for s, k in zip(spacing_zyx, step)])
    idx = np.ix_(*[np.arange(n) // k for n, k in zip(shape, step)])
    return noise[idx]


def ct_phase(rng: np.random.Generator) -> tuple[str, dict[str, float]]:
    """A contrast phase and the HU it gives the enhancing tissues (portal-venous is the table's)."""
    phase = rng.choice(["native", "arterial", "portal_venous"], p=[0.25, 0.25, 0.5])
    if phase == "native":
        return str(phase), {"liver": 58, "spleen": 48, "kidney_cortex": 35, "kidney_medulla": 30,
                            "artery": 42, "vein": 40, "heart_blood": 40, "myocardium": 45,
                            "stomach_wall": 40, "bowel": 25, "tumor": 35}
    if phase == "arterial":
        return str(phase), {"liver": 70, "spleen": 115, "kidney_cortex": 190, "kidney_medulla": 80,
                            "artery": 190, "vein": 70, "heart_blood": 180, "myocardium": 110,
                            "tumor": 110}
    return str(phase), {}


# Domain randomisation (``randomization`` 1): the relative jitter of every tissue grows this much
# (capped), and CT tissues other than air, gas and lung move by up to this many HU on top.
_RANDOM_JITTER_SCALE, _RANDOM_JITTER_MAX, _RANDOM_CT_SHIFT_HU = 3.0, 0.6, 60.0


def tissue_lut(rng: np.random.Generator, modality: str, overrides: Mapping[str, float],
               randomization: float = 0.0) -> np.ndarray:
    """Per-case intensity of every tissue class (float32, indexed by tissue id).

    ``randomization`` (0-1) widens every tissue's per-case jitter (up to 3x, at most +-60 %) and
    shifts CT soft tissues by up to +-60 HU: organs get intensities, and organ-to-organ contrasts,
    the standard phantoms never show, while CT stays in Hounsfield units.
    """
    lut = np.zeros(len(TISSUES), np.float32)
    grow = 1.0 + (_RANDOM_JITTER_SCALE - 1.0) * randomization
    for name, (mean, jitter) in APPEARANCE[modality].items():
        mean = overrides.get(name, mean)
        if randomization and jitter:
            jitter = min(jitter * grow, _RANDOM_JITTER_MAX)
        lut[TISSUE_ID[name]] = mean * (1.0 + rng.uniform(-jitter, jitter)) if jitter else mean
        if randomization and modality == "CT" and name not in ("air", "gas", "lung"):
            lut[TISSUE_ID[name]] += rng.uniform(-1.0, 1.0) * _RANDOM_CT_SHIFT_HU * randomization
    if modality == "CT" and rng.random() < 0.5:
        lut[TISSUE_ID["tumor"]] = lut[TISSUE_ID["liver"]] - rng.uniform(25, 50)  # most liver lesions are hypodense
    return lut


def _randomize(img: np.ndarray, rng: np.random.Generator, modality: str, spacing_zyx: np.ndarray,
               randomization: float) -> np.ndarray:
    """The domain-randomisation part of :func:`apply_modality`, before its usual texture and noise."""
    sigma_mm = rng.uniform(0.0, 2.5 * randomization)
    if sigma_mm > 0.3:
        img = ndimage.gaussian_filter(img, sigma=sigma_mm / spacing_zyx, mode="nearest")
    amplitude = rng.uniform(0.0, (0.08 if modality == "CT" else 0.6) * randomization)
    if modality == "CT":
        body = img > -500
        bias = 1.0 + amplitude * smooth_noise(rng, img.shape, 120.0 / spacing_zyx)
        return np.where(body, img * bias, img).astype(np.float32)
    if modality != "PET":
        img = img * np.exp(amplitude * smooth_noise(rng, img.shape, 100.0 / spacing_zyx))
    return img.astype(np.float32)


def block_mean(a: np.ndarray, k: Sequence[int]) -> np.ndarray:
    """Mean over non-overlapping k[z]xk[y]xk[x] blocks (shape must be divisible)."""
    kz, ky, kx = k
    nz, ny, nx = (s // f for s, f in zip(a.shape, k))
    return a.reshape(nz, kz, ny, ky, nx, kx).mean(axis=(1, 3, 5), dtype=np.float32)


def apply_modality(img: np.ndarray, tissue: np.ndarray, rng: np.random.Generator,
                    modality: str, spacing_zyx: np.ndarray, randomization: float = 0.0) -> np.ndarray:
    """Texture, blur, bias field and noise on the stored-resolution array (float32, [z, y, x]).

    ``randomization`` (0-1) adds a random blur (resolution: up to 2.5 mm sigma), stronger noise, a
    bias field on CT too (beam hardening, up to +-8 %) and a bias of up to +-60 % on MR.
    """
    shape = img.shape
    if randomization:
        img = _randomize(img, rng, modality, spacing_zyx, randomization)
    if modality == "CT":
        lung = tissue == TISSUE_ID["lung"]
        vess = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32),
                                       sigma=1.2 / spacing_zyx)
        thr = np.quantile(vess[lung], 0.9) if lung.any() else np.inf
        img = np.where(lung & (vess > thr), img + np.float32(rng.uniform(300, 600)) * np.minimum(
            (vess - thr) / max(float(vess.std()), 1e-6), 1.0), img)
        img *= 1.0 + 0.02 * smooth_noise(rng, shape, 20.0 / spacing_zyx) * (img > -500)
        noise = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=0.6)
        level = rng.uniform(10.0, 20.0) if not randomization else rng.uniform(5.0, 20.0 + 30.0 * randomization)
        img += noise * np.float32(level / max(float(noise.std()), 1e-6))
        return np.clip(img, -1024, 3071)
    if modality == "PET":
        fwhm = rng.uniform(5.0, 7.0)
        img = ndimage.gaussian_filter(img, sigma=fwhm / 2.355 / spacing_zyx, mode="nearest")
        counts_per_suv = rng.uniform(4.0, 15.0) * float(np.prod(spacing_zyx)) ** 0.5
        img = rng.poisson(np.maximum(img, 0) * counts_per_suv).astype(np.float32) / np.float32(counts_per_suv)
        return ndimage.gaussian_filter(img, sigma=1.5 / spacing_zyx).astype(np.float32)
    # MR: smooth multiplicative bias (+-20-35 %), texture, Rician noise.
    bias = np.exp(rng.uniform(0.2, 0.35) * smooth_noise(rng, shape, 150.0 / spacing_zyx))
    img = img * bias * (1.0 + 0.03 * smooth_noise(rng, shape, 15.0 / spacing_zyx))
    sigma = np.float32(rng.uniform(0.015, 0.04) * 1000.0)
    return np.sqrt((img + sigma * rng.normal(size=shape).astype(np.float32)) ** 2
                   + (sigma * rng.normal(size=shape).astype(np.float32)) ** 2)
