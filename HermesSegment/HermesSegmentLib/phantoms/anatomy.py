"""The torso painted into the render grid: body wall, bones, organs, vessels, tumours and lesions."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .appearance import coarse_noise
from .atlas import LABELS, TISSUE_ID, Blob, Canvas, segment_distance, widen


def _blob(cv: Canvas, rng: np.random.Generator, center, semi, rot_deg=(0, 0, 0), *, jitter_mm: float = 8.0,
          size_var: float = 0.15, rot_var_deg: float = 8.0, wobble: float = 0.08) -> Blob:
    """:meth:`Blob.make` with its variation scaled by the canvas's ``spread`` (domain randomisation)."""
    k = cv.spread
    return Blob.make(rng, center, semi, rot_deg, jitter_mm=jitter_mm * k, size_var=min(size_var * k, 0.45),
                     rot_var_deg=rot_var_deg * k, wobble=wobble * k)


def _paint_blob(cv: Canvas, blob: Blob, tissue: str, label: str | None,
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
    where = ~np.isin(cv.tissue[sl], [TISSUE_ID["air"], TISSUE_ID["table"], TISSUE_ID["skin"]]) if in_body else None
    cv.paint(sl, inside, tissue, label, where)
    if shell is not None:
        cv.paint(sl, inside & (r > shell[0]), shell[1], label, where)


def _paint_tube(cv: Canvas, points: np.ndarray, radius: float, tissue: str,
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
        cv.paint(sl, segment_distance(q, a, b) < radius, tissue, label, where)


def _paint_body_wall(cv: Canvas, rng: np.random.Generator) -> None:
    """The body outline, skin, fat and muscle wall, mediastinal fat, bowel with gas, ribs and the table."""
    # Body: elliptic cross-section, flatter at the back (the patient lies on the table).
    bx, by = 165.0 * rng.uniform(*widen(0.92, 1.08, cv.spread)), 112.0 * rng.uniform(*widen(0.9, 1.1, cv.spread))
    fat = max(0.02, rng.uniform(*widen(0.05, 0.16, cv.spread)))  # subcutaneous fat, fraction of the body radius
    reg = cv.region(np.array([-bx * 1.5, -by * 1.2, -400.0]), np.array([bx * 1.5, by * 1.6, 400.0]))
    assert reg is not None  # the box is centred on the field of view
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
    n1 = coarse_noise(rng, cv.tissue[sl].shape, cv.spacing[::-1], 25.0)
    n2 = coarse_noise(rng, cv.tissue[sl].shape, cv.spacing[::-1], 12.0)
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


def render_anatomy(cv: Canvas, rng: np.random.Generator, modality: str) -> None:
    """Paints the whole torso into the canvas (order matters: later structures win overlaps)."""
    _paint_body_wall(cv, rng)
    spine_y = 55.0 * rng.uniform(0.9, 1.1)
    # Muscles around the spine.
    for side in (-1, 1):
        _paint_blob(cv, _blob(cv, rng, (side * 38, spine_y + 42, 0), (28, 20, 320), wobble=0.03),
                    "muscle", None, in_body=True)
        _paint_blob(cv, _blob(cv, rng, (side * 42, spine_y - 5, -80), (20, 20, 110), (0, side * 8, 0),
                                   wobble=0.05), "muscle", None, in_body=True)
    # Pelvis: iliac wings (cortex with marrow inside) and sacrum (unlabelled bone).
    for side in (-1, 1):
        wing = _blob(cv, rng, (side * 105, 35, -185), (45, 20, 60), (0, 0, side * 35), wobble=0.04)
        _paint_blob(cv, wing, "marrow", None, shell=(0.8, "cortical_bone"), in_body=True)
    _paint_blob(cv, _blob(cv, rng, (0, spine_y + 20, -195), (45, 22, 55), (-20, 0, 0), wobble=0.04),
                "marrow", None, shell=(0.8, "cortical_bone"), in_body=True)

    # Lungs, then the organs that indent them.
    for side, key in ((-1, "lung_right"), (1, "lung_left")):
        _paint_blob(cv, _blob(cv, rng, (side * 78, 10, 190), (62, 78, 105)), "lung", key)
    liver = _blob(cv, rng, (-60, -5, 40), (82, 70, 66), (0, 0, -10))
    lobe = _blob(cv, rng, (15, -40, 55), (50, 28, 30), (0, 10, 0))
    _paint_blob(cv, liver, "liver", "liver")
    _paint_blob(cv, lobe, "liver", "liver")
    _paint_blob(cv, _blob(cv, rng, (92, 55, 55), (25, 45, 50), (0, 0, 30)), "spleen", "spleen")
    stomach = _blob(cv, rng, (55, -25, 60), (42, 32, 58), (0, -20, -30))
    _paint_blob(cv, stomach, "stomach_content", "stomach", shell=(0.85, "stomach_wall"))
    _paint_stomach_gas(cv, stomach)
    for side, key, z in ((1, "kidney_left", 5), (-1, "kidney_right", -12)):
        kidney = _blob(cv, rng, (side * 72, spine_y + 8, z), (27, 24, 52), (-15, side * 12, side * -20),
                            wobble=0.05)
        _paint_blob(cv, kidney, "kidney_medulla", key, shell=(0.7, "kidney_cortex"))
        # Renal sinus fat at the medial hilum gives the bean shape.
        hilum = _blob(cv, rng, kidney.center - np.array([side * 20, 0, 0]), (12, 10, 20),
                           jitter_mm=2, wobble=0.02)
        reg = cv.region(*hilum.bbox())
        if reg is not None:
            sl, q = reg
            cv.paint(sl, (hilum.radius(*q) < 1) & (cv.label[sl] == LABELS[key]), "fat", None)
    _paint_blob(cv, _blob(cv, rng, (0, -35, -210), (45, 35, 35), wobble=0.06),
                "urine", "urinary_bladder", shell=(0.93, "bladder_wall"))
    _paint_blob(cv, _blob(cv, rng, (18, -35, 150), (60, 48, 55), (0, -25, 20)),
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


def _paint_liver_vessels(cv: Canvas, rng: np.random.Generator, hilum: np.ndarray) -> None:
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


def _paint_stomach_gas(cv: Canvas, stomach: Blob) -> None:
    """Air collects in the anterior (non-dependent, smaller y) part of the stomach lumen."""
    lo, hi = stomach.bbox()
    reg = cv.region(lo, hi)
    if reg is None:
        return
    sl, q = reg
    lumen = (cv.tissue[sl] == TISSUE_ID["stomach_content"])
    cv.paint(sl, lumen & (q[1] < stomach.center[1] - 0.35 * stomach.semi.min()), "gas", "stomach")


def _paint_spine(cv: Canvas, rng: np.random.Generator, spine_y: float) -> None:
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


def _random_points_in(cv: Canvas, rng: np.random.Generator, label: int, n: int,
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


def _phys_blob(cv: Canvas, rng: np.random.Generator, p: np.ndarray, radius: float) -> Blob:
    """A small lobulated blob of ~radius mm centred at the physical point p (atlas frame)."""
    q = cv.m_inv @ (p - cv.t)
    return _blob(cv, rng, q, (radius,) * 3, jitter_mm=0, size_var=0.2, rot_var_deg=90, wobble=0.12)


def _paint_liver_tumors(cv: Canvas, rng: np.random.Generator) -> None:
    """1-3 hypo-/hyper-dense lesions of 5-18 mm radius, clipped to the liver."""
    for p in _random_points_in(cv, rng, LABELS["liver"], int(rng.integers(1, 4)), erode_vox=3):
        blob = _phys_blob(cv, rng, p, rng.uniform(5.0, 18.0))
        reg = cv.region(*blob.bbox())
        if reg is None:
            continue
        sl, q = reg
        cv.paint(sl, blob.radius(*q) < 1.0, "tumor", "liver_tumor", cv.label[sl] == LABELS["liver"])


def _paint_pet_lesions(cv: Canvas, rng: np.random.Generator, spine_y: float) -> None:
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
            cv.tissue[sl], [TISSUE_ID["air"], TISSUE_ID["cortical_bone"], TISSUE_ID["table"]])
        cv.paint(sl, blob.radius(*q) < 1.0, "pet_lesion", "fdg_avid_lesion", ok)
