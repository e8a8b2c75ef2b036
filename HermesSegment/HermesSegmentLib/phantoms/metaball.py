"""Metaball phantoms: a second, independent CT phantom family, used only to evaluate transfer.

A model trained on one generator can learn that generator's look rather than anatomy. This family
shares no shape, intensity or noise code with the training phantoms (:mod:`.anatomy`,
:mod:`.appearance`): every organ is a *metaball* -- the level set of a sum of Gaussian kernels
scattered inside its nominal box, thresholded at the level that gives it its drawn volume -- so
organs are lumpy and asymmetric instead of deformed ellipsoids; the body is a superellipse whose
width changes along z; vertebrae are cylinders with discs; vessels are chains of balls. CT
intensities come from their own ranges (homogeneous kidneys, a wide contrast range, uncorrelated
noise, an independent blur), on an axis-aligned LPS grid with its own spacing rules.

Targets (label values of :data:`.atlas.LABELS`): liver, spleen, both kidneys, stomach, aorta,
vertebrae, both lungs, heart. Same seed -> byte-identical arrays. :func:`write_metaball_dataset`
writes them as one nnU-Net dataset (``Dataset601_MetaballCT``) with a config like the training
phantoms', for ``tools/set_offered_targets.py`` and ``tools/experiments.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
import yaml
from scipy import ndimage

from ..atomic import atomic_paths, write_text
from ..errors import HermesError
from .atlas import LABELS

DATASET = "Dataset601_MetaballCT"
TARGETS = ("liver", "spleen", "kidney_left", "kidney_right", "stomach", "aorta", "vertebrae",
           "lung_left", "lung_right", "heart")
# HU ranges (low, high) a case draws each tissue's mean from; independent of appearance.APPEARANCE.
_HU = {"fat": (-130, -70), "muscle": (30, 70), "viscera": (0, 60), "gas": (-1000, -900), "lung": (-900, -780),
       "liver": (40, 120), "spleen": (35, 130), "kidney": (60, 240), "stomach": (-10, 50), "aorta": (35, 320),
       "bone": (250, 900), "disc": (60, 110), "heart": (35, 260), "skin": (0, 60)}


class _Grid:
    """Physical coordinates (LPS mm) of an axis-aligned grid, broadcastable to [z, y, x]."""

    def __init__(self, origin_xyz: np.ndarray, spacing_xyz: np.ndarray, size_xyz: np.ndarray) -> None:
        self.origin, self.spacing, self.size = origin_xyz, spacing_xyz, size_xyz
        axes = [origin_xyz[a] + spacing_xyz[a] * np.arange(size_xyz[a], dtype=np.float32) for a in range(3)]
        self.x, self.y, self.z = axes[0][None, None, :], axes[1][None, :, None], axes[2][:, None, None]
        self.shape = tuple(int(n) for n in size_xyz[::-1])


def _metaball(grid: _Grid, rng: np.random.Generator, centre, semi, kernels: int = 6) -> np.ndarray:
    """A lumpy organ: Gaussian kernels inside the box ``centre +- semi`` (mm; the size varies by
    -20..+25 %), thresholded at the level whose volume equals that ellipsoid's (bool [z, y, x])."""
    centre = np.asarray(centre, float)
    semi = np.asarray(semi, float) * rng.uniform(0.8, 1.25) * rng.uniform(0.9, 1.1, 3)
    lo, hi = centre - 1.6 * semi, centre + 1.6 * semi
    index = [np.flatnonzero((axis >= lo[a]) & (axis <= hi[a])) for a, axis in
             enumerate((grid.x.ravel(), grid.y.ravel(), grid.z.ravel()))]
    out = np.zeros(grid.shape, bool)
    if any(i.size == 0 for i in index):
        return out
    box = (slice(index[2][0], index[2][-1] + 1), slice(index[1][0], index[1][-1] + 1),
           slice(index[0][0], index[0][-1] + 1))
    x, y, z = grid.x[..., box[2]], grid.y[:, box[1], :], grid.z[box[0]]
    field = np.zeros(tuple(s.stop - s.start for s in box), np.float32)
    for _ in range(kernels):
        c = centre + semi * rng.uniform(-0.65, 0.65, 3)
        s = semi * rng.uniform(0.35, 0.6, 3)
        field += rng.uniform(0.6, 1.0) * np.exp(-0.5 * (((x - c[0]) / s[0]) ** 2 + ((y - c[1]) / s[1]) ** 2
                                                        + ((z - c[2]) / s[2]) ** 2))
    voxel = float(np.prod(grid.spacing))
    wanted = int(4.0 / 3.0 * np.pi * np.prod(semi) / voxel)
    if wanted < 1 or not field.any():
        return out
    level = np.partition(field.ravel(), -min(wanted, field.size))[-min(wanted, field.size)]
    out[box] = field >= max(level, 1e-6)
    return out


def _balls_along(grid: _Grid, points: np.ndarray, radius: float) -> np.ndarray:
    """Union of balls of ``radius`` mm every few mm along the polyline ``points`` (N, 3)."""
    out = np.zeros(grid.shape, bool)
    for a, b in zip(points[:-1], points[1:]):
        steps = max(2, int(np.linalg.norm(b - a) / (radius * 0.5)))
        for t in np.linspace(0.0, 1.0, steps):
            p = a + t * (b - a)
            out |= (grid.x - p[0]) ** 2 + (grid.y - p[1]) ** 2 + (grid.z - p[2]) ** 2 < radius ** 2
    return out


def generate_metaball_case(seed: int, *, max_voxels: int = 2_500_000) -> tuple[sitk.Image, sitk.Image, dict]:
    """One metaball CT case: (image int16 HU, label map uint8 with :data:`LABELS` values, info)."""
    rng = np.random.default_rng([seed & 0xFFFFFFFF, 601])
    ax, ay = rng.uniform(135, 195), rng.uniform(95, 135)  # body semi-axes at the waist
    power = rng.uniform(2.2, 4.0)  # superellipse: 2 is an ellipse, larger is boxier
    z_lo, z_hi = rng.uniform(-170, -90), rng.uniform(170, 260)  # field of view along the body
    spacing = np.array([rng.uniform(1.4, 3.0)] * 2 + [rng.uniform(2.0, 5.0)])
    extent = np.array([2.3 * max(ax, ay)] * 2 + [z_hi - z_lo])
    size = np.maximum(np.round(extent / spacing).astype(int), 16)
    if size.prod() > max_voxels:
        spacing = spacing * (size.prod() / max_voxels) ** (1 / 3)
        size = np.maximum(np.floor(extent / spacing).astype(int), 16)
    origin = np.array([-extent[0] / 2, -extent[1] / 2 + rng.uniform(-10, 20), z_lo])
    case = _Case(_Grid(origin, spacing, size), rng, ax, ay, power)
    case.paint_organs(z_lo, z_hi)
    image = ndimage.gaussian_filter(case.image, rng.uniform(0.3, 1.0) * np.ones(3))
    image += rng.normal(0.0, rng.uniform(5.0, 25.0), case.grid.shape).astype(np.float32)
    images = []
    for array in (np.clip(np.round(image), -1024, 3071).astype(np.int16), case.label):
        itk = sitk.GetImageFromArray(array)
        itk.SetOrigin(tuple(float(v) for v in origin))
        itk.SetSpacing(tuple(float(v) for v in spacing))
        images.append(itk)
    counts = np.bincount(case.label.ravel(), minlength=max(LABELS.values()) + 1)
    present = {key: LABELS[key] for key in TARGETS if counts[LABELS[key]] > 0}
    voxel_ml = float(np.prod(spacing)) / 1000.0
    info = {"family": "metaball", "seed": int(seed), "modality": "CT", "labels": present,
            "spacing": [float(s) for s in spacing], "size": [int(n) for n in size],
            "volumes_ml": {key: round(float(counts[v]) * voxel_ml, 2) for key, v in present.items()}}
    return images[0], images[1], info


class _Case:
    """The body (superellipse cross-section whose width varies along z, skin, fat, muscle wall,
    a cavity of bowel-like texture with gas) and the organs painted into it."""

    def __init__(self, grid: _Grid, rng: np.random.Generator, ax: float, ay: float, power: float) -> None:
        self.grid, self.rng, self.ax, self.ay = grid, rng, ax, ay
        self.hu = {name: rng.uniform(*bounds) for name, bounds in _HU.items()}
        width = 1.0 + 0.08 * np.sin(grid.z / rng.uniform(90, 160) + rng.uniform(0, 6.3))  # waist and chest
        r = ((np.abs(grid.x) / (ax * width)) ** power + (np.abs(grid.y) / (ay * width)) ** power) ** (1 / power)
        self.body = r < 1.0
        self.image = np.full(grid.shape, -1000.0, np.float32)
        self.label = np.zeros(grid.shape, np.uint8)
        self.image[self.body] = self.hu["fat"]
        self.image[self.body & (r > 0.97)] = self.hu["skin"]
        wall = rng.uniform(0.08, 0.2)
        cavity = r < 1.0 - wall  # bowel-like texture with gas; the organs are painted over it
        self.image[(r < 1.0 - wall + 0.05) & ~cavity] = self.hu["muscle"]
        blobs = ndimage.gaussian_filter(rng.normal(size=grid.shape).astype(np.float32), 6.0 / grid.spacing[::-1])
        self.image[cavity] = self.hu["viscera"] + 25.0 * blobs[cavity] / max(float(blobs.std()), 1e-6)
        self.image[cavity & (blobs > np.quantile(blobs, 0.97))] = self.hu["gas"]

    def paint(self, mask: np.ndarray, tissue: str, target: str | None) -> None:
        mask &= self.body
        self.image[mask] = self.hu[tissue]
        self.label[mask] = LABELS[target] if target else 0

    def paint_organs(self, z_lo: float, z_hi: float) -> None:
        """Lungs, heart, liver, spleen, stomach, kidneys, aorta and vertebrae, in that order."""
        grid, rng, ax, ay = self.grid, self.rng, self.ax, self.ay
        spine_y = ay * rng.uniform(0.38, 0.52)
        chest = rng.uniform(90, 140)  # where the diaphragm sits
        for side, key in ((-1, "lung_right"), (1, "lung_left")):
            lung = _metaball(grid, rng, (side * ax * 0.45, 0.0, chest + 80), (ax * 0.33, ay * 0.6, 85), 7)
            self.paint(lung & (grid.z > chest - 15), "lung", key)
        self.paint(_metaball(grid, rng, (20.0, -ay * 0.3, chest + 45), (50, 42, 48), 5), "heart", "heart")
        self.paint(_metaball(grid, rng, (-ax * 0.42, -ay * 0.1, chest - 50), (ax * 0.42, ay * 0.55, 62), 8),
                   "liver", "liver")
        self.paint(_metaball(grid, rng, (ax * 0.52, ay * 0.35, chest - 45), (24, 40, 45), 5), "spleen", "spleen")
        self.paint(_metaball(grid, rng, (ax * 0.3, -ay * 0.25, chest - 40), (38, 30, 50), 5), "stomach", "stomach")
        for side, key in ((-1, "kidney_right"), (1, "kidney_left")):
            centre = (side * rng.uniform(55, 80), spine_y + rng.uniform(-5, 15), chest - rng.uniform(100, 150))
            self.paint(_metaball(grid, rng, centre, (24, 22, 50), 4), "kidney", key)
        aorta = np.array([[rng.uniform(8, 25), spine_y - rng.uniform(28, 40), z]
                          for z in np.linspace(z_lo - 5, chest + 60, 7)])
        aorta[:, :2] += rng.uniform(-4, 4, (7, 2))
        self.paint(_balls_along(grid, aorta, rng.uniform(9, 14)), "aorta", "aorta")
        z = z_lo - 10
        while z < z_hi:
            height, radius = rng.uniform(20, 30), rng.uniform(16, 24)
            disc = rng.uniform(5, 9)
            ring = grid.x ** 2 + (grid.y - spine_y) ** 2 < radius ** 2
            self.paint(ring & (grid.z >= z) & (grid.z < z + height - disc), "bone", "vertebrae")
            self.paint(ring & (grid.z >= z + height - disc) & (grid.z < z + height), "disc", None)
            z += height


def write_metaball_dataset(out_dir: str | Path, cases: int, seed: int = 0,
                           progress: Callable[[str], None] | None = None) -> list[Path]:
    """``out_dir/Dataset601_MetaballCT`` (nnU-Net layout, label values i+1 for :data:`TARGETS`) and
    ``out_dir/metaball_config.yaml`` (the dataset entry of a training config). Case i uses a seed
    derived from (seed, i). Returns [dataset folder, config path]."""
    if cases < 1:
        raise HermesError(f"cases must be at least 1, got {cases}")
    folder = Path(out_dir) / DATASET
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    value_of = {key: i + 1 for i, key in enumerate(TARGETS)}
    table = np.zeros(max(LABELS.values()) + 1, np.uint8)
    for key, value in value_of.items():
        table[LABELS[key]] = value
    for i in range(cases):
        case_seed = int(np.random.SeedSequence([seed & 0xFFFFFFFF, 601, i]).generate_state(1)[0])
        image, labelmap, _ = generate_metaball_case(case_seed)
        relabelled = sitk.GetImageFromArray(table[sitk.GetArrayViewFromImage(labelmap)])
        relabelled.CopyInformation(labelmap)
        name = f"case_{i:04d}"
        for itk, path in ((image, folder / "imagesTr" / f"{name}_0000.nii.gz"),
                          (relabelled, folder / "labelsTr" / f"{name}.nii.gz")):
            with atomic_paths([path]) as (temp,):
                sitk.WriteImage(itk, str(temp), useCompression=True)
        if progress is not None:
            progress(f"{DATASET} {name}")
    meta = {"name": "MetaballCT", "description": "HermesSegment metaball CT phantoms (a second, independent "
            "family, for evaluation only); not real patients", "channel_names": {"0": "CT"},
            "labels": {"background": 0, **value_of}, "numTraining": cases, "file_ending": ".nii.gz",
            "hermes": {"modality": "CT", "family": "metaball", "generator_seed": seed}}
    write_text(folder / "dataset.json", json.dumps(meta, indent=2) + "\n")
    config = Path(out_dir) / "metaball_config.yaml"
    entry = {"name": "MetaballCT", "path": DATASET, "modality": "CT", "origin": "synthetic",
             "labels": {v: k for k, v in value_of.items()}}
    write_text(config, yaml.safe_dump({"datasets": [entry]}, sort_keys=False, default_flow_style=None, width=1000))
    return [folder, config]
