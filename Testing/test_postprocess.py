"""postprocess/: each cleanup operation does what it says."""

import numpy as np

from HermesSegmentLib.postprocess import PostprocessOptions
from HermesSegmentLib.postprocess.components import apply
from HermesSegmentLib.postprocess.side import keep_to_side

SPACING = (2.0, 1.0, 1.0)  # mm: one voxel = 2 mm^3 = 0.002 mL


def two_blobs() -> np.ndarray:
    mask = np.zeros((20, 30, 30), dtype=bool)
    mask[2:12, 2:12, 2:12] = True      # 1000 voxels = 2.0 mL
    mask[14:16, 20:23, 20:23] = True   # 18 voxels = 0.036 mL
    return mask


def test_no_options_is_identity_copy():
    mask = two_blobs()
    out = apply(mask, SPACING, PostprocessOptions())
    np.testing.assert_array_equal(out, mask)
    assert out is not mask


def test_keep_largest_uses_26_connectivity():
    mask = two_blobs()
    out = apply(mask, SPACING, PostprocessOptions(keep_largest=True))
    assert out.sum() == 1000 and out[5, 5, 5] and not out[15, 21, 21]
    # A corner-touching voxel is part of the largest component (26-connectivity).
    mask[12, 12, 12] = True
    out = apply(mask, SPACING, PostprocessOptions(keep_largest=True))
    assert out[12, 12, 12] and out.sum() == 1001


def test_remove_small_islands_by_volume():
    mask = two_blobs()
    out = apply(mask, SPACING, PostprocessOptions(min_island_ml=0.05))
    assert out.sum() == 1000
    out = apply(mask, SPACING, PostprocessOptions(min_island_ml=0.03))
    assert out.sum() == 1018
    out = apply(mask, SPACING, PostprocessOptions(min_island_ml=5.0))
    assert not out.any()


def test_fill_holes_in_3d_only():
    mask = np.zeros((12, 12, 12), dtype=bool)
    mask[2:10, 2:10, 2:10] = True
    mask[4:6, 4:6, 4:6] = False      # enclosed cavity: filled
    mask[5:7, 5:7, 7:10] = False     # tunnel open to the outside along x: kept open
    out = apply(mask, SPACING, PostprocessOptions(fill_holes=True))
    assert out[4:6, 4:6, 4:6].all()
    assert not out[5:7, 5:7, 8:10].any()


def test_fill_holes_when_mask_touches_the_volume_border():
    mask = np.zeros((6, 6, 6), dtype=bool)
    mask[:, :, :] = True
    mask[2:4, 2:4, 2:4] = False
    out = apply(mask, SPACING, PostprocessOptions(fill_holes=True))
    assert out.all()


def test_empty_mask_stays_empty():
    mask = np.zeros((5, 5, 5), dtype=bool)
    out = apply(mask, SPACING, PostprocessOptions(keep_largest=True, fill_holes=True, min_island_ml=1.0))
    assert not out.any()


def test_keep_to_side_zeroes_what_lies_across_the_midline():
    left, right = np.full((2, 2, 20), 200, np.uint8), np.full((2, 2, 20), 200, np.uint8)
    # The crop starts at x = 10 of the full grid, 2 mm voxels, midline at x = 20: 4 voxels (8 mm) of slack.
    keep_to_side(left, "left", midline_x=20.0, offset_x=10, spacing_x=2.0, tolerance_mm=8.0)
    keep_to_side(right, "right", midline_x=20.0, offset_x=10, spacing_x=2.0, tolerance_mm=8.0)
    assert np.flatnonzero(left[0, 0]).tolist() == list(range(6, 20))   # full-grid x >= 16
    assert np.flatnonzero(right[0, 0]).tolist() == list(range(0, 15))  # full-grid x <= 24


def test_one_piece_organs_keep_their_largest_component():
    mask = two_blobs()
    options = PostprocessOptions()
    assert options.for_target("liver").keep_largest and not options.for_target("aorta").keep_largest
    assert apply(mask, SPACING, options.for_target("liver")).sum() == 1000
    np.testing.assert_array_equal(apply(mask, SPACING, options.for_target("vertebrae")), mask)
    assert not PostprocessOptions(single_piece=False).for_target("liver").keep_largest
    assert PostprocessOptions(keep_largest=True).for_target("aorta").keep_largest  # every target when asked


def scipy_components_kept(mask: np.ndarray, voxel_ml: float, keep_largest: bool, min_island_ml) -> np.ndarray:
    """The clean-up as scipy.ndimage states it: 26-connected labels, sizes, the first largest."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3), dtype=bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    keep = sizes > 0
    keep[0] = False
    if min_island_ml:
        keep &= sizes * voxel_ml >= min_island_ml
    if keep_largest and keep.any():
        largest = int(np.argmax(np.where(keep, sizes, 0)))
        keep[:] = False
        keep[largest] = True
    return keep[labels]


def test_components_equal_scipys_labelling_ties_included():
    rng = np.random.default_rng(4)
    for density in (0.15, 0.3, 0.5):
        mask = rng.random((17, 23, 29)) < density
        for keep_largest, min_island_ml in ((True, None), (False, 0.01), (True, 0.01), (False, None)):
            options = PostprocessOptions(keep_largest=keep_largest, min_island_ml=min_island_ml)
            expected = scipy_components_kept(mask, 0.002, keep_largest, min_island_ml)
            np.testing.assert_array_equal(apply(mask, SPACING, options), expected)
    ties = np.zeros((10, 10, 10), dtype=bool)
    ties[1:3, 1:3, 1:3] = ties[6:8, 6:8, 6:8] = True  # two pieces of 8 voxels: the first in raster order stays
    out = apply(ties, SPACING, PostprocessOptions(keep_largest=True))
    assert out.sum() == 8 and out[1, 1, 1] and not out[6, 6, 6]
