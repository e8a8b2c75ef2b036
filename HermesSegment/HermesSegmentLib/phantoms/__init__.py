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

from .atlas import CONTAINS, LABELS, MODALITIES, REGIONS
from .case import DEFAULT_MAX_VOXELS, generate_case, target_masks
from .datasets import PSEUDO_DATASETS, dataset_labelmap, write_pseudo_datasets, write_single_case

__all__ = [
    "CONTAINS", "DEFAULT_MAX_VOXELS", "LABELS", "MODALITIES", "PSEUDO_DATASETS", "REGIONS", "dataset_labelmap",
    "generate_case", "target_masks", "write_pseudo_datasets", "write_single_case",
]
