"""Partial scans: a slab of a scan must give, inside the slab, the masks the whole scan gives.

A scan that covers only part of the body (a 90 mm slab through the abdomen, a neck-only CT) must
not change what is found inside it (issue 15; docs/experiments.md, section 7). The measurement:
segment the whole image, segment a ``SLAB_SLICES``-slice slab of it (the image grid's z, centred on
the target's true extent) on its own, and compare the slab's mask with the whole image's mask
inside the slab (Dice). Both runs go through ``segment_image`` (float32, default post-processing),
as a user gets them. On phantoms the slab is taken at ``SLAB_SPACING_MM`` slices: 30 slices =
90 mm, the slab of the issue's real CT, shorter than the demo model's 192 mm window.

Used by ``tools/experiments.py slab`` (the report), ``tools/set_offered_targets.py
--slab-cases`` (a target is offered only where it holds on slabs) and the test of the bundled model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .metrics import dice

if TYPE_CHECKING:
    import SimpleITK as sitk

    from ..models import LoadedModel

#: Slab length in slices of the image grid, and the slice spacing of the phantoms it is cut from.
SLAB_SLICES = 30
SLAB_SPACING_MM = 3.0
#: First seed of the standard phantoms the slab check uses (the training phantoms use seeds from
#: 0, the offer's test phantoms from 1000).
SLAB_SEED = 5000


def slab_consistency(image: sitk.Image, model: LoadedModel, modality: str, targets: Sequence[str],
                     truth: Mapping[str, np.ndarray], slices: int = SLAB_SLICES) -> dict[str, float]:
    """{target: Dice between its mask in a ``slices``-slice slab of ``image`` segmented alone and
    the whole image's mask inside that slab}.

    ``truth``: target -> bool (z, y, x) on ``image``'s grid; it only places the slab (centred on
    the target's planes). A target absent from ``truth`` or from both masks is left out. The
    targets must be offered by ``model`` for ``modality``.
    """
    from ..pipeline import segment_image

    present = [t for t in targets if t in truth and truth[t].any()]
    if not present:
        return {}
    whole = segment_image(image, modality=modality, targets=present, model=model, device="cpu",
                          precision="float32")
    shape = tuple(image.GetSize()[::-1])
    scores = {}
    for mask in whole.masks:
        planes = np.flatnonzero(truth[mask.key].any(axis=(1, 2)))
        start = int(np.clip(int(planes.mean()) - slices // 2, 0, max(0, shape[0] - slices)))
        stop = min(shape[0], start + slices)
        part = segment_image(image[:, :, start:stop], modality=modality, targets=[mask.key], model=model,
                             device="cpu", precision="float32").masks[0].full((stop - start,) + shape[1:])
        inside = mask.full(shape)[start:stop]
        if part.any() or inside.any():
            scores[mask.key] = round(dice(part, inside), 4)
    return scores


def phantom_slab_consistency(model: LoadedModel, modality: str, targets: Sequence[str],
                             seeds: Sequence[int]) -> dict[str, list[float]]:
    """:func:`slab_consistency` on standard phantoms of ``modality`` (one per seed, LPS, at
    ``SLAB_SPACING_MM`` mm): {target: [Dice per phantom that holds it]}."""
    import SimpleITK as sitk

    from ..phantoms import generate_case, target_masks

    spacing = (SLAB_SPACING_MM,) * 3
    rows: dict[str, list[float]] = {}
    for seed in seeds:
        image, labelmap, info = generate_case(seed, modality, orientation="LPS", spacing=spacing,
                                              max_voxels=4_000_000, supersample=False)
        truth = target_masks(sitk.GetArrayFromImage(labelmap), info["labels"])
        for target, score in slab_consistency(image, model, modality, targets, truth).items():
            rows.setdefault(target, []).append(score)
    return rows
