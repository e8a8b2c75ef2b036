"""Only the windows the asked targets need, and masks that do not depend on the other targets asked.

With the bundled demo model (float32), on a generated torso and on two real head-and-neck CTs (OpenKBP
training patients, never its test patients):
- target-aware windows (the default) give the full run's masks, bit for bit;
- a target asked alone gets the very mask it gets when every target is asked.
(That fewer windows run is checked in test_window_plan.py with a predictor whose targets are known:
the demo model's 192 mm windows on these small fields of view all reach its "maybe" voxels.)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from HermesSegmentLib.phantoms import generate_case
from HermesSegmentLib.pipeline import segment_image

HN = Path(__file__).resolve().parents[2] / "shared" / "data" / "Dataset901_OpenKBP_HN"
NO_CLEANUP = {"side_constraint": False, "single_piece": False}


def masks(result) -> dict:
    return {m.key: (m.offset_zyx, m.array) for m in result.masks}


def same_masks(a, b) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key][0] == b[key][0], key
        np.testing.assert_array_equal(a[key][1], b[key][1], err_msg=key)


@pytest.fixture(scope="module")
def torso():
    image, _, _ = generate_case(3, "CT", spacing=(3.0, 3.0, 4.0), orientation="LPS", supersample=False)
    return image


def run(image, targets, **options):
    from HermesSegmentLib.postprocess import PostprocessOptions

    return segment_image(image, modality="CT", targets=targets, model="hermes-demo", device="cpu",
                         precision="float32", postprocess=PostprocessOptions(**NO_CLEANUP), **options)


@pytest.mark.slow
def test_alone_with_target_windows_equals_all_targets_with_all_windows(torso):
    everything = run(torso, "all", target_windows=False)
    assert everything.windows["windows"] == everything.windows["lattice"]
    for key in ("kidney_left", "heart"):
        alone = run(torso, [key])
        assert alone.masks[0].voxels > 0 and alone.windows["windows"] <= alone.windows["lattice"]
        same_masks(masks(alone), {key: masks(everything)[key]})


def training_cases(count: int) -> list[str]:
    """The first ``count`` cases of OpenKBP's training split (never its test patients)."""
    cases = json.loads((HN / "cases.json").read_text(encoding="utf-8"))
    return [name for name, info in sorted(cases.items(), key=lambda item: int(item[0].split("_")[-1]))
            if info.get("split") == "train-pats"][:count]


@pytest.mark.slow
@pytest.mark.parametrize("number, key", [(0, "lung_left"), (1, "lung_right")])
def test_real_head_and_neck_ct_alone_and_with_all_targets_and_all_windows(number, key):
    if not HN.is_dir():
        pytest.skip("../shared/data/Dataset901_OpenKBP_HN is not beside this checkout")
    from HermesSegmentLib.read import read_image

    case = training_cases(2)[number]
    image = read_image(HN / "imagesTr" / f"{case}_0000.nii.gz")
    full_all = masks(run(image, "all", target_windows=False))
    alone = run(image, [key])
    assert alone.masks[0].voxels > 0, f"{case}: no {key} found, so the comparison would prove nothing"
    same_masks(masks(alone), {key: full_all[key]})
    assert alone.windows["windows"] <= alone.windows["lattice"]
