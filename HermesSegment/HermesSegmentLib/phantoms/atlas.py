"""The atlas frame: target labels, regions, tissue classes, deformed-ellipsoid organs and the render grid.

Anatomy is laid out in patient LPS millimetres (+x = patient's left, +y = posterior, +z = superior;
origin near L1 on the body axis). A case maps atlas points q to physical points p = M q + t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .. import vocabulary

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

#: Targets whose truth includes other targets' voxels (one label per voxel hides the overlap): the
#: vocabulary's rule (a tumour lies inside its organ), for the phantom's targets.
CONTAINS: dict[str, tuple[str, ...]] = {
    outer: tuple(key for key in inner if key in LABELS)
    for outer, inner in vocabulary.contained_targets().items() if outer in LABELS
}

MODALITIES: tuple[str, ...] = ("CT", "MR-T1", "MR-T2", "PET")

#: Atlas z-interval (mm) each region must cover; "torso" covers every target.
REGIONS: dict[str, tuple[float, float]] = {
    "torso": (-255.0, 285.0),
    "thorax": (45.0, 290.0),
    "abdomen": (-110.0, 165.0),
    "abdomen_pelvis": (-255.0, 150.0),
}


# Tissue classes of the render grid; intensities come from APPEARANCE per modality.
TISSUES = (
    "air", "lung", "fat", "muscle", "skin", "bowel", "gas", "liver", "spleen", "kidney_cortex",
    "kidney_medulla", "stomach_wall", "stomach_content", "artery", "vein", "myocardium",
    "heart_blood", "cortical_bone", "marrow", "disc", "csf", "urine", "bladder_wall", "tumor",
    "pet_lesion", "table",
)
TISSUE_ID = {name: i for i, name in enumerate(TISSUES)}


def widen(lo: float, hi: float, spread: float) -> tuple[float, float]:
    """The interval [lo, hi] stretched ``spread`` times about its centre (exactly itself at 1)."""
    if spread == 1.0:
        return lo, hi
    centre, half = (lo + hi) / 2, (hi - lo) / 2 * spread
    return centre - half, centre + half


def rotation(rng: np.random.Generator, max_deg: Sequence[float]) -> np.ndarray:
    """A random rotation (3x3) with angles about x, y, z uniform in +-max_deg (degrees)."""
    return rotation_fixed([rng.uniform(-m, m) for m in max_deg])


@dataclass(frozen=True)
class Blob:
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
             size_var: float = 0.15, rot_var_deg: float = 8.0, wobble: float = 0.08) -> Blob:
        """Draws one organ: nominal centre/semi-axes (mm) and orientation, then random variation."""
        scale = rng.uniform(1 - size_var, 1 + size_var) * rng.uniform(0.95, 1.05, 3)
        base = rotation_fixed(rot_deg)
        k = 4
        directions = rng.normal(size=(k, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        return Blob(
            center=np.asarray(center, float) + rng.uniform(-jitter_mm, jitter_mm, 3),
            semi=np.asarray(semi, float) * scale,
            rot=base @ rotation(rng, (rot_var_deg,) * 3),
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


def rotation_fixed(deg: Sequence[float]) -> np.ndarray:
    """Rotation matrix from fixed Euler angles (degrees about x, y, z)."""
    ax, ay, az = (math.radians(a) for a in deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def segment_distance(q: tuple[np.ndarray, np.ndarray, np.ndarray], a: np.ndarray,
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


class Canvas:
    """Tissue and label arrays ([z, y, x], uint8) on an axis-aligned LPS grid, plus the atlas map.

    Physical point p (mm) = origin + spacing * index; atlas point q = inv(M) (p - t) where
    M = R diag(s) is the patient's global size and pose.
    """

    def __init__(self, origin: np.ndarray, spacing: np.ndarray, size_xyz: Sequence[int],
                 m: np.ndarray, t: np.ndarray, spread: float = 1.0) -> None:
        self.origin, self.spacing, self.size = origin, spacing, np.asarray(size_xyz)
        self.spread = spread  # how far organ sizes, positions and shapes vary (1: the standard phantoms)
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
        self.tissue[slices][mask] = TISSUE_ID[tissue]
        self.label[slices][mask] = LABELS[label] if label else 0
