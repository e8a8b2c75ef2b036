"""Procedurally generated multi-modality torso phantoms and partially labelled pseudo-datasets.

No real scans can be downloaded where HermesSegment is built, so the demo model is trained on these
phantoms. Each case is one adult-sized torso (air outside, skin, subcutaneous fat, muscle wall,
bowel/fat mixture, ribs, pelvis, psoas and paraspinal muscles, IVC and iliac vessels, scanner table)
with thirteen labelled targets whose keys are vocabulary keys (:data:`LABELS`).

Geometry
    Anatomy is laid out in an *atlas* frame in patient LPS millimetres (+x = patient's left,
    +y = posterior, +z = superior; origin near L1 on the body axis). A case draws a global patient
    transform (per-axis size +-12 %, rotation a few degrees, shift) and per-organ variation (size
    +-15 %, shift, rotation, smooth random displacement of the ellipsoid: a sum of random low-frequency
    sine waves), so every seed gives a different but anatomically ordered torso.
Sampling
    Tissue and labels are rendered on a canonical LPS grid that is finer than the stored grid along
    coarse axes (3x, odd so the label of a stored voxel is the label at its centre); intensities
    are block-averaged down (partial volume). Spacing is drawn per case and modality (in-plane
    0.6-5 mm, slices 1-10 mm), then coarsened uniformly if the case would exceed ``max_voxels``.
Storage
    The stored array is the canonical one flipped / permuted (LPS, RAS = direction diag(-1,-1,1),
    axis permutations) or resampled onto a slightly oblique grid; direction and origin are set so
    that every voxel keeps its physical position. Image and label map share the geometry.
Appearance
    CT in HU with a random contrast phase, lung vessels and correlated noise; MR-T1 / MR-T2 in
    arbitrary units (0-2000) with a smooth multiplicative bias field and Rician noise; PET in SUV with
    ~5-7 mm FWHM blur and Poisson-like count noise.

Label maps hold one integer per voxel (nnU-Net style). A lesion inside the liver is
``liver_tumor``, so the liver *target* is liver ∪ liver_tumor: use :func:`target_masks` rather than
comparing label values. Same seed and modality -> byte-identical arrays; the anatomy depends on the
seed only, so one seed rendered in several modalities is the same patient.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import yaml
from scipy import ndimage

from ..atomic import atomic_paths, write_text
from ..errors import HermesError

#: Label value of each target in a generated case (the vocabulary keys). Dataset label values differ.
LABELS: dict[str, int] = {
    "liver": 1,
    "liver_tumor": 2,
    "spleen": 3,
    "kidney_left": 4,
    "kidney_right": 5,
    "stomach": 6,
    "aorta": 7,
    "vertebrae": 8,
    "lung_left": 9,
    "lung_right": 10,
    "heart": 11,
    "urinary_bladder": 12,
    "fdg_avid_lesion": 13,
}

#: Targets whose truth includes other targets' voxels (one label per voxel hides the overlap).
CONTAINS: dict[str, tuple[str, ...]] = {"liver": ("liver_tumor",)}

MODALITIES: tuple[str, ...] = ("CT", "MR-T1", "MR-T2", "PET")

#: Atlas z-interval (mm) each region must cover; "torso" covers every target.
REGIONS: dict[str, tuple[float, float]] = {
    "torso": (-255.0, 285.0),
    "thorax": (45.0, 290.0),
    "abdomen": (-110.0, 165.0),
    "abdomen_pelvis": (-255.0, 150.0),
}

DEFAULT_MAX_VOXELS = 3_000_000
_FINE_MAX_VOXELS = 8_000_000  # render grid cap (also <= 8x the stored cap); bounds time and memory

# Tissue classes of the render grid; intensities come from _APPEARANCE per modality.
_TISSUES = (
    "air", "lung", "fat", "muscle", "skin", "bowel", "gas", "liver", "spleen", "kidney_cortex",
    "kidney_medulla", "stomach_wall", "stomach_content", "artery", "vein", "myocardium",
    "heart_blood", "cortical_bone", "marrow", "disc", "csf", "urine", "bladder_wall", "tumor",
    "pet_lesion", "table",
)
_T = {name: i for i, name in enumerate(_TISSUES)}

# (mean, relative per-case jitter). CT values are for the portal-venous phase; _ct_phase adjusts.
_APPEARANCE: dict[str, dict[str, tuple[float, float]]] = {
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


# --------------------------------------------------------------------------------------------
# Shapes in the atlas frame
# --------------------------------------------------------------------------------------------

def _rotation(rng: np.random.Generator, max_deg: Sequence[float]) -> np.ndarray:
    """A random rotation (3x3) with angles about x, y, z uniform in +-max_deg (degrees)."""
    return _rotation_fixed([rng.uniform(-m, m) for m in max_deg])


@dataclass(frozen=True)
class _Blob:
    """A randomly deformed ellipsoid.

    ``radius(q)`` maps atlas points to a normalised radius (< 1 inside): the point is moved into
    the ellipsoid's unit frame, displaced by a sum of low-frequency sine waves (smooth, so the
    surface stays organ-like), and its length is taken.
    """

    center: np.ndarray  # (3,) mm
    semi: np.ndarray  # (3,) semi-axes, mm
    rot: np.ndarray  # (3, 3) local -> atlas
    freqs: np.ndarray  # (K, 3) spatial frequencies in unit-frame radians
    phases: np.ndarray  # (K,)
    amps: np.ndarray  # (K, 3) displacement amplitudes in unit-frame lengths

    @staticmethod
    def make(rng: np.random.Generator, center: Sequence[float], semi: Sequence[float],
             rot_deg: Sequence[float] = (0, 0, 0), *, jitter_mm: float = 8.0,
             size_var: float = 0.15, rot_var_deg: float = 8.0, wobble: float = 0.08) -> "_Blob":
        """Draws one organ: nominal centre/semi-axes (mm) and orientation, then random variation."""
        scale = rng.uniform(1 - size_var, 1 + size_var) * rng.uniform(0.95, 1.05, 3)
        base = _rotation_fixed(rot_deg)
        k = 4
        directions = rng.normal(size=(k, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        return _Blob(
            center=np.asarray(center, float) + rng.uniform(-jitter_mm, jitter_mm, 3),
            semi=np.asarray(semi, float) * scale,
            rot=base @ _rotation(rng, (rot_var_deg,) * 3),
            freqs=directions * rng.uniform(1.5, 3.0, (k, 1)),
            phases=rng.uniform(0, 2 * math.pi, k),
            amps=rng.normal(size=(k, 3)) * wobble / math.sqrt(3),
        )

    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        """Atlas bounding box (lo, hi) in mm of the rotated ellipsoid, grown by the displacement."""
        half = np.sqrt(((self.rot * self.semi[None, :]) ** 2).sum(axis=1))
        grow = 1.0 + float(np.linalg.norm(np.abs(self.amps).sum(axis=0))) + 0.02
        return self.center - half * grow, self.center + half * grow

    def radius(self, qx: np.ndarray, qy: np.ndarray, qz: np.ndarray) -> np.ndarray:
        """Normalised radius (float32, same shape as the broadcast inputs); < 1 means inside."""
        # Python floats keep the float32 arrays float32 (NumPy scalars would promote to float64).
        c, r, s = self.center.tolist(), self.rot.tolist(), self.semi.tolist()
        d = (qx - c[0], qy - c[1], qz - c[2])
        u = [(r[0][i] * d[0] + r[1][i] * d[1] + r[2][i] * d[2]) * (1.0 / s[i]) for i in range(3)]
        base = list(u)  # the waves are evaluated at the undisplaced point
        for f, ph, a in zip(self.freqs.tolist(), self.phases.tolist(), self.amps.tolist()):
            wave = np.sin(f[0] * base[0] + f[1] * base[1] + f[2] * base[2] + ph)
            for i in range(3):
                u[i] = u[i] + a[i] * wave
        return np.sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2])


def _rotation_fixed(deg: Sequence[float]) -> np.ndarray:
    """Rotation matrix from fixed Euler angles (degrees about x, y, z)."""
    ax, ay, az = (math.radians(a) for a in deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _segment_distance(q: tuple[np.ndarray, np.ndarray, np.ndarray], a: np.ndarray,
                      b: np.ndarray) -> np.ndarray:
    """Distance (mm) from atlas points to the segment a-b."""
    a_, ab = a.tolist(), (b - a).tolist()
    t = ((q[0] - a_[0]) * ab[0] + (q[1] - a_[1]) * ab[1] + (q[2] - a_[2]) * ab[2]) * (
        1.0 / sum(v * v for v in ab))
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt(sum((q[i] - (a_[i] + t * ab[i])) ** 2 for i in range(3)))


# --------------------------------------------------------------------------------------------
# The render grid
# --------------------------------------------------------------------------------------------

_Slices = tuple[slice, slice, slice]  # a [z, y, x] box of the render grid
_Coords = tuple[np.ndarray, np.ndarray, np.ndarray]  # atlas x, y, z (mm), broadcastable to the box


class _Canvas:
    """Tissue and label arrays ([z, y, x], uint8) on an axis-aligned LPS grid, plus the atlas map.

    Physical point p (mm) = origin + spacing * index; atlas point q = inv(M) (p - t) where
    M = R diag(s) is the patient's global size and pose.
    """

    def __init__(self, origin: np.ndarray, spacing: np.ndarray, size_xyz: Sequence[int],
                 m: np.ndarray, t: np.ndarray) -> None:
        self.origin, self.spacing, self.size = origin, spacing, np.asarray(size_xyz)
        self.m, self.t, self.m_inv = m, t, np.linalg.inv(m)
        shape = tuple(int(n) for n in self.size[::-1])
        self.tissue = np.zeros(shape, np.uint8)
        self.label = np.zeros(shape, np.uint8)

    def region(self, lo: np.ndarray, hi: np.ndarray) -> tuple[_Slices, _Coords] | None:
        """Index slices covering the atlas box [lo, hi] and the atlas coordinates inside it.

        Returns (slices [z, y, x], (qx, qy, qz)) with q components broadcastable to the slab
        shape, or None when the box misses the grid.
        """
        corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1])
                            for z in (lo[2], hi[2])])
        phys = corners @ self.m.T + self.t
        i0 = np.floor((phys.min(0) - self.origin) / self.spacing).astype(int)
        i1 = np.ceil((phys.max(0) - self.origin) / self.spacing).astype(int) + 1
        i0, i1 = np.clip(i0, 0, self.size), np.clip(i1, 0, self.size)
        if np.any(i1 <= i0):
            return None
        axes = [(self.origin[a] + self.spacing[a] * np.arange(i0[a], i1[a]) - self.t[a])
                .astype(np.float32) for a in range(3)]
        px = axes[0][None, None, :]
        py = axes[1][None, :, None]
        pz = axes[2][:, None, None]
        mi = self.m_inv.tolist()
        q = tuple(mi[r][0] * px + mi[r][1] * py + mi[r][2] * pz for r in range(3))
        slices = (slice(i0[2], i1[2]), slice(i0[1], i1[1]), slice(i0[0], i1[0]))
        return slices, q

    def paint(self, slices: _Slices, mask: np.ndarray, tissue: str, label: str | None,
              where: np.ndarray | None = None) -> None:
        """Sets tissue (and the target label, 0 for unlabelled tissue) where mask (and where) hold."""
        if where is not None:
            mask = mask & where
        self.tissue[slices][mask] = _T[tissue]
        self.label[slices][mask] = LABELS[label] if label else 0


# --------------------------------------------------------------------------------------------
# Anatomy
# --------------------------------------------------------------------------------------------

def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], cell: Sequence[float]) -> np.ndarray:
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


def _coarse_noise(rng: np.random.Generator, shape: Sequence[int], spacing_zyx: Sequence[float],
                  feature_mm: float) -> np.ndarray:
    """Smooth noise with ~feature_mm features, computed on a ~3 mm grid and repeated up to ``shape``.

    Rendering it directly on the fine grid costs seconds; the blocks are far below the feature
    size, so the pattern is the same.
    """
    step = [max(1, int(3.0 // s)) for s in spacing_zyx]
    small = [int(math.ceil(n / k)) for n, k in zip(shape, step)]
    noise = _smooth_noise(rng, small, [feature_mm / (s * k) for s, k in zip(spacing_zyx, step)])
    idx = np.ix_(*[np.arange(n) // k for n, k in zip(shape, step)])
    return noise[idx]


def _paint_blob(cv: _Canvas, blob: _Blob, tissue: str, label: str | None,
                shell: tuple[float, str] | None = None, in_body: bool = False) -> None:
    """Paints a blob; ``shell=(r, tissue2)`` paints the part with radius > r as tissue2 (same label).

    ``in_body`` clips it to the body outline (muscles and bones near the skin must not bulge out).
    """
    reg = cv.region(*blob.bbox())
    if reg is None:
        return
    sl, q = reg
    r = blob.radius(*q)
    inside = r < 1.0
    where = ~np.isin(cv.tissue[sl], [_T["air"], _T["table"], _T["skin"]]) if in_body else None
    cv.paint(sl, inside, tissue, label, where)
    if shell is not None:
        cv.paint(sl, inside & (r > shell[0]), shell[1], label, where)


def _paint_tube(cv: _Canvas, points: np.ndarray, radius: float, tissue: str,
                label: str | None, within: str | None = None) -> None:
    """Paints a tube of ``radius`` mm along the atlas polyline ``points`` (N, 3).

    ``within`` restricts it to the voxels of that target (vessels inside an organ keep its label).
    """
    for a, b in zip(points[:-1], points[1:]):
        reg = cv.region(np.minimum(a, b) - radius, np.maximum(a, b) + radius)
        if reg is None:
            continue
        sl, q = reg
        where = cv.label[sl] == LABELS[within] if within else None
        cv.paint(sl, _segment_distance(q, a, b) < radius, tissue, label, where)


def _render_anatomy(cv: _Canvas, rng: np.random.Generator, modality: str) -> None:
    """Paints the whole torso into the canvas (order matters: later structures win overlaps)."""
    # Body: elliptic cross-section, flatter at the back (the patient lies on the table).
    bx, by = 165.0 * rng.uniform(0.92, 1.08), 112.0 * rng.uniform(0.9, 1.1)
    fat = rng.uniform(0.05, 0.16)  # subcutaneous fat, fraction of the body radius
    reg = cv.region(np.array([-bx * 1.5, -by * 1.2, -400.0]), np.array([bx * 1.5, by * 1.6, 400.0]))
    sl, (qx, qy, qz) = reg
    taper = 1.0 + 0.06 * np.cos(qz / 180.0)  # a little wider at the waist/chest, narrower at ends
    nx, ny = np.abs(qx) / (bx * taper), np.abs(qy) / (by * taper)
    rb = np.where(qy > 0, (nx ** 3 + ny ** 3) ** (1 / 3), np.sqrt(nx ** 2 + ny ** 2)).astype(np.float32)
    body = rb < 1.0
    cv.paint(sl, body, "fat", None)
    cv.paint(sl, body & (rb > 0.985), "skin", None)
    cv.paint(sl, rb < 1.0 - fat, "muscle", None)
    inner = rb < 1.0 - fat - rng.uniform(0.04, 0.07)
    thorax = qz > 95.0
    cv.paint(sl, inner & thorax, "fat", None)  # mediastinal fat; lungs and heart come later
    # Abdomen: bowel loops and mesenteric fat, with gas pockets.
    n1 = _coarse_noise(rng, cv.tissue[sl].shape, cv.spacing[::-1], 25.0)
    n2 = _coarse_noise(rng, cv.tissue[sl].shape, cv.spacing[::-1], 12.0)
    abdomen = inner & ~thorax
    cv.paint(sl, abdomen & (n1 > -0.4), "bowel", None)
    cv.paint(sl, abdomen & (n1 > -0.4) & (n2 > 1.3), "gas", None)
    # Ribs: a band near the body wall, descending anteriorly, with a sternal gap.
    theta = np.arctan2(qy, qx)
    pitch = 26.0
    zr = qz + 30.0 * (1.0 - np.sin(theta)) / 2.0  # anterior ends lower than posterior heads
    rib = (np.abs(rb - (1.0 - fat - 0.08)) < 0.025) & (np.abs(((zr - 60.0) % pitch) - pitch / 2) < 5.0)
    rib &= (zr > 60.0) & (zr < 290.0) & ~((np.abs(qx) < 25.0) & (qy < 0))
    cv.paint(sl, rib, "cortical_bone", None)
    # Scanner table under the back.
    table = (qy > by * 1.05 + 12.0) & (qy < by * 1.05 + 24.0) & (np.abs(qx) < 230.0)
    cv.paint(sl, table & ~body, "table", None)
    del n1, n2, theta, zr, rib, rb, nx, ny, taper

    spine_y = 55.0 * rng.uniform(0.9, 1.1)
    # Muscles around the spine.
    for side in (-1, 1):
        _paint_blob(cv, _Blob.make(rng, (side * 38, spine_y + 42, 0), (28, 20, 320), wobble=0.03),
                    "muscle", None, in_body=True)
        _paint_blob(cv, _Blob.make(rng, (side * 42, spine_y - 5, -80), (20, 20, 110), (0, side * 8, 0),
                                   wobble=0.05), "muscle", None, in_body=True)
    # Pelvis: iliac wings (cortex with marrow inside) and sacrum (unlabelled bone).
    for side in (-1, 1):
        wing = _Blob.make(rng, (side * 105, 35, -185), (45, 20, 60), (0, 0, side * 35), wobble=0.04)
        _paint_blob(cv, wing, "marrow", None, shell=(0.8, "cortical_bone"), in_body=True)
    _paint_blob(cv, _Blob.make(rng, (0, spine_y + 20, -195), (45, 22, 55), (-20, 0, 0), wobble=0.04),
                "marrow", None, shell=(0.8, "cortical_bone"), in_body=True)

    # Lungs, then the organs that indent them.
    for side, key in ((-1, "lung_right"), (1, "lung_left")):
        _paint_blob(cv, _Blob.make(rng, (side * 78, 10, 190), (62, 78, 105)), "lung", key)
    liver = _Blob.make(rng, (-60, -5, 40), (82, 70, 66), (0, 0, -10))
    lobe = _Blob.make(rng, (15, -40, 55), (50, 28, 30), (0, 10, 0))
    _paint_blob(cv, liver, "liver", "liver")
    _paint_blob(cv, lobe, "liver", "liver")
    _paint_blob(cv, _Blob.make(rng, (92, 55, 55), (25, 45, 50), (0, 0, 30)), "spleen", "spleen")
    stomach = _Blob.make(rng, (55, -25, 60), (42, 32, 58), (0, -20, -30))
    _paint_blob(cv, stomach, "stomach_content", "stomach", shell=(0.85, "stomach_wall"))
    _paint_stomach_gas(cv, stomach)
    for side, key, z in ((1, "kidney_left", 5), (-1, "kidney_right", -12)):
        kidney = _Blob.make(rng, (side * 72, spine_y + 8, z), (27, 24, 52), (-15, side * 12, side * -20),
                            wobble=0.05)
        _paint_blob(cv, kidney, "kidney_medulla", key, shell=(0.7, "kidney_cortex"))
        # Renal sinus fat at the medial hilum gives the bean shape.
        hilum = _Blob.make(rng, kidney.center - np.array([side * 20, 0, 0]), (12, 10, 20),
                           jitter_mm=2, wobble=0.02)
        reg = cv.region(*hilum.bbox())
        if reg is not None:
            sl, q = reg
            cv.paint(sl, (hilum.radius(*q) < 1) & (cv.label[sl] == LABELS[key]), "fat", None)
    _paint_blob(cv, _Blob.make(rng, (0, -35, -210), (45, 35, 35), wobble=0.06),
                "urine", "urinary_bladder", shell=(0.93, "bladder_wall"))
    _paint_blob(cv, _Blob.make(rng, (18, -35, 150), (60, 48, 55), (0, -25, 20)),
                "heart_blood", "heart", shell=(0.7, "myocardium"))

    # Vessels: IVC right of the aorta, iliac arteries, then the aorta itself.
    jit = lambda pts: np.asarray(pts, float) + rng.uniform(-5, 5, (len(pts), 3))  # noqa: E731
    _paint_tube(cv, jit([(-25, spine_y - 22, -130), (-25, spine_y - 25, 0), (-35, 10, 90),
                         (-15, -20, 125)]), 11.0 * rng.uniform(0.85, 1.15), "vein", None)
    bif = np.array([10.0, spine_y - 28, -115]) + rng.uniform(-5, 5, 3)
    for side in (-1, 1):
        _paint_tube(cv, np.array([bif, bif + (side * 50 - 5, -5, -80)]), 6.0, "artery", None)
    aorta = jit([(8, -30, 150), (5, -22, 205), (15, 15, 225), (22, spine_y - 25, 200),
                 (20, spine_y - 25, 130), (16, spine_y - 28, 0)])
    _paint_tube(cv, np.vstack([aorta, bif]), 12.0 * rng.uniform(0.85, 1.15), "artery", "aorta")

    _paint_spine(cv, rng, spine_y)
    _paint_liver_vessels(cv, rng, liver.center + np.array([35.0, 5.0, -15.0]))
    if modality == "PET":
        _paint_pet_lesions(cv, rng, spine_y)
    else:
        _paint_liver_tumors(cv, rng)


def _paint_liver_vessels(cv: _Canvas, rng: np.random.Generator, hilum: np.ndarray) -> None:
    """Portal/hepatic vein branches (2-6 mm radius) from the hilum into the liver.

    They are part of the liver target (as in liver annotations) but have blood intensity, so the
    liver is not a flat blob: bright in portal-venous CT, dark in T2 (flow void), cool in PET.
    """
    for p in _random_points_in(cv, rng, LABELS["liver"], int(rng.integers(4, 8)), erode_vox=2):
        end = cv.m_inv @ (p - cv.t)
        mid = (hilum + end) / 2 + rng.uniform(-12, 12, 3)
        radius = rng.uniform(2.0, 6.0)
        _paint_tube(cv, np.array([hilum, mid]), radius, "vein", "liver", within="liver")
        _paint_tube(cv, np.array([mid, end]), radius * 0.6, "vein", "liver", within="liver")


def _paint_stomach_gas(cv: _Canvas, stomach: _Blob) -> None:
    """Air collects in the anterior (non-dependent, smaller y) part of the stomach lumen."""
    lo, hi = stomach.bbox()
    reg = cv.region(lo, hi)
    if reg is None:
        return
    sl, q = reg
    lumen = (cv.tissue[sl] == _T["stomach_content"])
    cv.paint(sl, lumen & (q[1] < stomach.center[1] - 0.35 * stomach.semi.min()), "gas", "stomach")


def _paint_spine(cv: _Canvas, rng: np.random.Generator, spine_y: float) -> None:
    """Vertebrae T1..L5 as stacked bodies with posterior arches; discs and canal are unlabelled."""
    z, level = -165.0, 0
    while z < 300.0:
        lumbar = level < 5
        h = (28.0 if lumbar else 21.0) * rng.uniform(0.92, 1.08)
        rx, ry = (24.0, 18.0) if lumbar else (17.0, 14.0)
        zc, disc = z + h / 2, (8.0 if lumbar else 5.0)
        lo, hi = np.array([-60, spine_y - ry - 2, z]), np.array([60, spine_y + 75, z + h])
        reg = cv.region(lo, hi)
        if reg is not None:
            sl, (qx, qy, qz) = reg
            dz = np.abs(qz - zc)
            rr = np.sqrt((qx / rx) ** 2 + ((qy - spine_y) / ry) ** 2)
            body = (rr < 1.0) & (dz < (h - disc) / 2)
            cv.paint(sl, (rr < 1.0) & (dz >= (h - disc) / 2), "disc", None)
            cv.paint(sl, body, "marrow", "vertebrae")
            cv.paint(sl, body & ((rr > 0.85) | (dz > (h - disc) / 2 - 1.5)), "cortical_bone", "vertebrae")
            canal_y = spine_y + ry + 9.0
            rc = np.sqrt(qx ** 2 + (qy - canal_y) ** 2)
            in_level = dz < h * 0.38
            arch = (rc > 8.5) & (rc < 14.0) & (qy > canal_y - 6.0)
            spinous = (np.abs(qx) < 4.0) & (qy > canal_y) & (qy < canal_y + (45.0 if lumbar else 35.0))
            transverse = (np.abs(qy - canal_y + 2.0) < 5.0) & (np.abs(qx) < (38.0 if lumbar else 30.0))
            cv.paint(sl, in_level & (arch | spinous | transverse), "cortical_bone", "vertebrae")
            cv.paint(sl, rc < 8.5, "csf", None)
        z += h
        level += 1


def _random_points_in(cv: _Canvas, rng: np.random.Generator, label: int, n: int,
                      erode_vox: int = 2) -> list[np.ndarray]:
    """Up to n random physical points (mm) inside ``label``, away from its border when possible."""
    mask = cv.label == label
    core = ndimage.binary_erosion(mask, iterations=erode_vox) if mask.sum() > 1000 else mask
    idx = np.flatnonzero(core if core.any() else mask)
    if idx.size == 0:
        return []
    picks = rng.choice(idx, size=min(n, idx.size), replace=False)
    zyx = np.stack(np.unravel_index(picks, mask.shape), axis=1)
    return [cv.origin + cv.spacing * p[::-1] for p in zyx]


def _phys_blob(cv: _Canvas, rng: np.random.Generator, p: np.ndarray, radius: float) -> _Blob:
    """A small lobulated blob of ~radius mm centred at the physical point p (atlas frame)."""
    q = cv.m_inv @ (p - cv.t)
    return _Blob.make(rng, q, (radius,) * 3, jitter_mm=0, size_var=0.2, rot_var_deg=90, wobble=0.12)


def _paint_liver_tumors(cv: _Canvas, rng: np.random.Generator) -> None:
    """1-3 hypo-/hyper-dense lesions of 5-18 mm radius, clipped to the liver."""
    for p in _random_points_in(cv, rng, LABELS["liver"], int(rng.integers(1, 4)), erode_vox=3):
        blob = _phys_blob(cv, rng, p, rng.uniform(5.0, 18.0))
        reg = cv.region(*blob.bbox())
        if reg is None:
            continue
        sl, q = reg
        cv.paint(sl, blob.radius(*q) < 1.0, "tumor", "liver_tumor", cv.label[sl] == LABELS["liver"])


def _paint_pet_lesions(cv: _Canvas, rng: np.random.Generator, spine_y: float) -> None:
    """2-5 FDG-avid nodes/metastases (4-15 mm radius) at nodal stations and in the lungs.

    They are painted only over unlabelled tissue or lung, so an organ target keeps its full mask
    and a lesion is never hidden inside another target (except lung, whose truth the lesion
    displaces, as in the real PET datasets).
    """
    stations = [(-20, spine_y - 40, 40), (25, spine_y - 45, -40), (-45, 0, -150), (45, 0, -150),
                (-30, -10, 170), (30, -5, 185), (-20, spine_y - 30, -90)]
    n = int(rng.integers(2, 6))
    picks = rng.choice(len(stations), size=min(n, len(stations)), replace=False)
    points = [cv.m @ (np.asarray(stations[i], float) + rng.uniform(-10, 10, 3)) + cv.t for i in picks]
    if rng.random() < 0.6:
        points += _random_points_in(cv, rng, LABELS["lung_right" if rng.random() < 0.5 else "lung_left"], 1)
    allowed = (0, LABELS["lung_left"], LABELS["lung_right"])
    for p in points:
        blob = _phys_blob(cv, rng, p, rng.uniform(4.0, 15.0))
        reg = cv.region(*blob.bbox())
        if reg is None:
            continue
        sl, q = reg
        ok = np.isin(cv.label[sl], allowed) & ~np.isin(
            cv.tissue[sl], [_T["air"], _T["cortical_bone"], _T["table"]])
        cv.paint(sl, blob.radius(*q) < 1.0, "pet_lesion", "fdg_avid_lesion", ok)


# --------------------------------------------------------------------------------------------
# Spacing, appearance, storage orientation
# --------------------------------------------------------------------------------------------

def _draw_spacing(rng: np.random.Generator, modality: str) -> np.ndarray:
    """Acquisition spacing (x, y, z) mm typical of the modality: in-plane 0.6-5, slices 1-10."""
    if modality == "CT":
        inplane = rng.uniform(0.6, 1.0) if rng.random() < 0.6 else rng.uniform(1.0, 2.0)
        slice_mm = rng.choice([1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0, 7.5, 10.0],
                              p=[.1, .1, .1, .15, .15, .15, .15, .05, .05])
    elif modality == "PET":
        inplane = rng.uniform(2.0, 5.0)
        slice_mm = rng.uniform(2.0, 5.0)
    else:
        inplane = rng.uniform(0.7, 2.0) if rng.random() < 0.85 else rng.uniform(2.0, 5.0)
        slice_mm = rng.choice([2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0])
    return np.array([inplane, inplane, slice_mm], float)


def _ct_phase(rng: np.random.Generator) -> tuple[str, dict[str, float]]:
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


def _tissue_lut(rng: np.random.Generator, modality: str, overrides: Mapping[str, float]) -> np.ndarray:
    """Per-case intensity of every tissue class (float32, indexed by tissue id)."""
    lut = np.zeros(len(_TISSUES), np.float32)
    for name, (mean, jitter) in _APPEARANCE[modality].items():
        mean = overrides.get(name, mean)
        lut[_T[name]] = mean * (1.0 + rng.uniform(-jitter, jitter)) if jitter else mean
    if modality == "CT" and rng.random() < 0.5:
        lut[_T["tumor"]] = lut[_T["liver"]] - rng.uniform(25, 50)  # most liver lesions are hypodense
    return lut


def _block_mean(a: np.ndarray, k: Sequence[int]) -> np.ndarray:
    """Mean over non-overlapping k[z]xk[y]xk[x] blocks (shape must be divisible)."""
    kz, ky, kx = k
    nz, ny, nx = (s // f for s, f in zip(a.shape, k))
    return a.reshape(nz, kz, ny, ky, nx, kx).mean(axis=(1, 3, 5), dtype=np.float32)


def _apply_modality(img: np.ndarray, tissue: np.ndarray, rng: np.random.Generator,
                    modality: str, spacing_zyx: np.ndarray) -> np.ndarray:
    """Texture, blur, bias field and noise on the stored-resolution array (float32, [z, y, x])."""
    shape = img.shape
    if modality == "CT":
        lung = tissue == _T["lung"]
        vess = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32),
                                       sigma=1.2 / spacing_zyx)
        thr = np.quantile(vess[lung], 0.9) if lung.any() else np.inf
        img = np.where(lung & (vess > thr), img + np.float32(rng.uniform(300, 600)) * np.minimum(
            (vess - thr) / max(float(vess.std()), 1e-6), 1.0), img)
        img *= 1.0 + 0.02 * _smooth_noise(rng, shape, 20.0 / spacing_zyx) * (img > -500)
        noise = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), sigma=0.6)
        img += noise * np.float32(rng.uniform(10.0, 20.0) / max(float(noise.std()), 1e-6))
        return np.clip(img, -1024, 3071)
    if modality == "PET":
        fwhm = rng.uniform(5.0, 7.0)
        img = ndimage.gaussian_filter(img, sigma=fwhm / 2.355 / spacing_zyx, mode="nearest")
        counts_per_suv = rng.uniform(4.0, 15.0) * float(np.prod(spacing_zyx)) ** 0.5
        img = rng.poisson(np.maximum(img, 0) * counts_per_suv).astype(np.float32) / np.float32(counts_per_suv)
        return ndimage.gaussian_filter(img, sigma=1.5 / spacing_zyx).astype(np.float32)
    # MR: smooth multiplicative bias (+-20-35 %), texture, Rician noise.
    bias = np.exp(rng.uniform(0.2, 0.35) * _smooth_noise(rng, shape, 150.0 / spacing_zyx))
    img = img * bias * (1.0 + 0.03 * _smooth_noise(rng, shape, 15.0 / spacing_zyx))
    sigma = np.float32(rng.uniform(0.015, 0.04) * 1000.0)
    return np.sqrt((img + sigma * rng.normal(size=shape).astype(np.float32)) ** 2
                   + (sigma * rng.normal(size=shape).astype(np.float32)) ** 2)


def _storage(rng: np.random.Generator) -> tuple[str, tuple[int, int, int], tuple[bool, bool, bool]]:
    """Storage orientation: kind, axis permutation (stored axis a = canonical axis perm[a]), flips."""
    kind = str(rng.choice(["LPS", "RAS", "permuted", "oblique"], p=[0.35, 0.35, 0.15, 0.15]))
    if kind == "RAS":
        return kind, (0, 1, 2), (True, True, False)
    if kind == "permuted":
        perm = [(0, 2, 1), (1, 0, 2), (2, 0, 1), (1, 2, 0)][int(rng.integers(4))]
        return kind, perm, tuple(bool(b) for b in rng.integers(0, 2, 3))
    return kind, (0, 1, 2), (False, False, False)


#: Storage used when the caller fixes the orientation ("permuted": coronal-like, axes x, z, y).
_STORAGE_FIXED = {
    "LPS": ("LPS", (0, 1, 2), (False, False, False)),
    "RAS": ("RAS", (0, 1, 2), (True, True, False)),
    "permuted": ("permuted", (0, 2, 1), (False, True, True)),
    "oblique": ("oblique", (0, 1, 2), (False, False, False)),
}


def _to_storage(arr: np.ndarray, origin: np.ndarray, spacing: np.ndarray,
                perm: Sequence[int], flips: Sequence[bool]) -> sitk.Image:
    """Wraps a canonical LPS array ([z, y, x]) as an image stored with permuted/flipped axes.

    Stored index axis a runs along canonical axis perm[a], reversed where flips[a]; origin and
    direction are set so every voxel keeps its physical position.
    """
    size_c = np.array(arr.shape[::-1])
    out = np.transpose(arr, [2 - perm[2 - n] for n in range(3)])
    for a in range(3):
        if flips[a]:
            out = np.flip(out, axis=2 - a)
    direction = np.zeros((3, 3))
    new_origin = origin.astype(float).copy()
    for a in range(3):
        c = perm[a]
        direction[c, a] = -1.0 if flips[a] else 1.0
        if flips[a]:
            new_origin[c] += spacing[c] * (size_c[c] - 1)
    img = sitk.GetImageFromArray(np.ascontiguousarray(out))
    img.SetSpacing([float(spacing[c]) for c in perm])
    img.SetOrigin([float(v) for v in new_origin])
    img.SetDirection([float(v) for v in direction.ravel()])
    return img


def _oblique(image: sitk.Image, label: sitk.Image, rng: np.random.Generator,
             background: float) -> tuple[sitk.Image, sitk.Image]:
    """Resamples image (linear) and label map (nearest) onto a grid tilted by up to ~8 degrees.

    The tilted grid keeps the size, spacing and centre of the original one, as an oblique
    acquisition with the same field of view would (corners outside the original are background),
    so the voxel count stays under the cap.
    """
    rot = _rotation(rng, (8.0, 8.0, 8.0))
    spacing = np.array(image.GetSpacing())
    size = np.array(image.GetSize())
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2.0).tolist()))
    ref = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    ref.SetSpacing(spacing.tolist())
    ref.SetOrigin((centre - rot @ (spacing * (size - 1) / 2.0)).tolist())
    ref.SetDirection(rot.ravel().tolist())
    img = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, background, image.GetPixelID())
    lab = sitk.Resample(label, ref, sitk.Transform(), sitk.sitkNearestNeighbor, 0, label.GetPixelID())
    return img, lab


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

def generate_case(seed: int, modality: str, *, region: str = "torso",
                  spacing: Sequence[float] | None = None, orientation: str | None = None,
                  max_voxels: int = DEFAULT_MAX_VOXELS,
                  supersample: bool = True) -> tuple[sitk.Image, sitk.Image, dict]:
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

    Returns:
        (image, labelmap, truth_info): image is int16 HU for CT, float32 for MR (a.u., ~0-2000)
        and PET (SUV); labelmap is uint8 with :data:`LABELS` values on the same geometry;
        truth_info = {"labels": {target: value} for the targets present, "modality", "region",
        "spacing" (stored, x/y/z of the image axes, mm), "size", "orientation", "seed",
        "ct_phase" (CT only), "volumes_ml": {target: mL}}.
    """
    if modality not in MODALITIES:
        raise HermesError(f"unknown phantom modality {modality!r}; choose one of {', '.join(MODALITIES)}")
    if region not in REGIONS:
        raise HermesError(f"unknown phantom region {region!r}; choose one of {', '.join(REGIONS)}")
    if orientation is not None and orientation not in _STORAGE_FIXED:
        raise HermesError(f"unknown orientation {orientation!r}; choose LPS, RAS, permuted or oblique")
    if max_voxels < 1000:
        raise HermesError(f"max_voxels={max_voxels} is too small; use at least 1000")
    m_index = MODALITIES.index(modality)
    anatomy_rng = np.random.default_rng([seed & 0xFFFFFFFF, 0])
    geo_rng = np.random.default_rng([seed & 0xFFFFFFFF, 1, m_index])
    look_rng = np.random.default_rng([seed & 0xFFFFFFFF, 2, m_index])

    # Patient size and pose: atlas -> physical p = m q + t.
    scale = np.array([anatomy_rng.uniform(0.88, 1.12)] * 2 + [anatomy_rng.uniform(0.92, 1.08)])
    scale[1] *= anatomy_rng.uniform(0.93, 1.07)
    m = _rotation(anatomy_rng, (3.0, 3.0, 6.0)) @ np.diag(scale)
    t = anatomy_rng.uniform(-15, 15, 3)

    # Field of view: square in-plane, long axis covering the region with random margins.
    sp = np.asarray(spacing, float) if spacing is not None else _draw_spacing(geo_rng, modality)
    if sp.shape != (3,) or np.any(sp <= 0):
        raise HermesError(f"spacing must be three positive numbers (x, y, z mm), got {spacing!r}")
    fov_xy = float(np.clip(2 * 165.0 * scale[0] * geo_rng.uniform(1.08, 1.3), 300.0, 480.0))
    z0, z1 = REGIONS[region]
    zlo = z0 * scale[2] + t[2] - geo_rng.uniform(10, 40)
    zhi = z1 * scale[2] + t[2] + geo_rng.uniform(10, 40)
    extent = np.array([fov_xy, fov_xy, zhi - zlo])
    center = np.array([t[0] + geo_rng.uniform(-15, 15), t[1] + geo_rng.uniform(0, 25), (zlo + zhi) / 2])
    n = np.maximum(np.round(extent / sp).astype(int), 8)
    if n.prod() > max_voxels:
        # Coarsen uniformly (keeps the anisotropy), but never past 10 mm slices: then in-plane only.
        sp = sp * (n.prod() / max_voxels) ** (1 / 3)
        if sp[2] > 10.0:
            sp[:2] *= math.sqrt(sp[2] / 10.0)
            sp[2] = 10.0
        n = np.maximum(np.floor(extent / sp).astype(int), 8)
    k = np.where(sp > 1.6, 3, 1) if supersample else np.ones(3, int)
    while (n * k).prod() > min(_FINE_MAX_VOXELS, 8 * max_voxels) and k.max() > 1:
        # give up supersampling on the finest axis first: thick slices gain most from it
        k[min((a for a in range(3) if k[a] > 1), key=lambda a: sp[a])] = 1
    fine_sp = sp / k
    origin_out = center - sp * (n - 1) / 2  # centre of the first stored voxel
    origin_fine = origin_out - fine_sp * (k - 1) / 2

    cv = _Canvas(origin_fine, fine_sp, n * k, m, t)
    _render_anatomy(cv, anatomy_rng, modality)

    phase, overrides = _ct_phase(look_rng) if modality == "CT" else ("", {})
    lut = _tissue_lut(look_rng, modality, overrides)
    kz, ky, kx = int(k[2]), int(k[1]), int(k[0])
    centre = (slice(kz // 2, None, kz), slice(ky // 2, None, ky), slice(kx // 2, None, kx))
    labels = np.ascontiguousarray(cv.label[centre])
    tissue_c = np.ascontiguousarray(cv.tissue[centre])
    intensity = _block_mean(lut[cv.tissue], (kz, ky, kx))
    del cv
    intensity = _apply_modality(intensity, tissue_c, look_rng, modality, sp[::-1].copy())

    kind, perm, flips = _storage(geo_rng) if orientation is None else _STORAGE_FIXED[orientation]
    dtype = np.int16 if modality == "CT" else np.float32
    if modality == "CT":
        intensity = np.round(intensity)
    image = _to_storage(intensity.astype(dtype), origin_out, sp, perm, flips)
    labelmap = _to_storage(labels, origin_out, sp, perm, flips)
    if kind == "oblique":
        image, labelmap = _oblique(image, labelmap, geo_rng, -1000.0 if modality == "CT" else 0.0)

    lab_arr = sitk.GetArrayViewFromImage(labelmap)
    voxel_ml = float(np.prod(labelmap.GetSpacing())) / 1000.0
    counts = np.bincount(lab_arr.ravel(), minlength=max(LABELS.values()) + 1)
    present = {key: v for key, v in LABELS.items() if counts[v] > 0}
    masks = target_masks(lab_arr, present)
    info = {
        "labels": present,
        "modality": modality,
        "region": region,
        "spacing": [float(s) for s in labelmap.GetSpacing()],
        "size": [int(s) for s in labelmap.GetSize()],
        "orientation": kind,
        "seed": int(seed),
        "volumes_ml": {key: round(float(mk.sum()) * voxel_ml, 2) for key, mk in masks.items()},
    }
    if modality == "CT":
        info["ct_phase"] = phase
    return image, labelmap, info


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
                          max_voxels: int = DEFAULT_MAX_VOXELS,
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
            image, labelmap, info = generate_case(case_seed, modality, region=region, max_voxels=max_voxels)
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
                       "region": region, "generator_seed": seed, "cases": cases},
        }
        write_text(folder / "dataset.json", json.dumps(meta, indent=2) + "\n")
        config.append({"name": name, "path": folder.name, "modality": modality,
                       "labels": {v: k for k, v in value_of.items()}, "weight": 1.0})
        written.append(folder)
    cfg_path = root / "phantom_config.yaml"
    write_text(cfg_path, yaml.safe_dump({"datasets": config}, sort_keys=False, default_flow_style=None, width=1000))
    written.append(cfg_path)
    return written
