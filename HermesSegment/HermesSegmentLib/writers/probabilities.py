"""Per-target probability maps on the input grid (uint8 NIfTI)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, List, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_paths
from ..mask import image_on_grid
from .nifti import write_image

PathLike = Union[str, Path]


def probability_map_name(stem: str, key: str) -> str:
    """The file name of target ``key``'s probability map for ``stem``."""
    return f"{stem}_{key}_prob.nii.gz"


def write_probability_maps(
    stem: PathLike,
    maps: Iterable[Tuple[str, np.ndarray]],
    reference: sitk.Image,
) -> List[Path]:
    """Write ``<stem>_<key>_prob.nii.gz`` for each (key, probability) on ``reference``'s grid.

    ``probability``: [z, y, x] float in [0, 1] (stored as uint8 round(255 p)) or uint8 0..255.
    ``maps`` may be a generator so that only one full-size map is in memory at a time.
    """
    stem = Path(stem)
    written = []
    for key, probability in maps:
        if probability.dtype != np.uint8:
            probability = np.rint(np.clip(probability, 0.0, 1.0) * 255).astype(np.uint8)
        final = stem.with_name(probability_map_name(stem.name, key))
        with atomic_paths([final]) as (temp,):
            write_image(image_on_grid(probability, reference), temp, "probabilities")
        written.append(final)
    return written
