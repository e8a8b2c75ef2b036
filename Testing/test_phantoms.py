"""Tests of the procedural phantom generator (phantoms/) and its CLI (cli/phantoms.py).

Cases are generated small (``max_voxels``) so the whole file runs in seconds on one core.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import yaml

from HermesSegmentLib import phantoms
from HermesSegmentLib.cli import phantoms as cli_phantoms
from HermesSegmentLib.errors import HermesError

SMALL = 200_000  # stored voxels: ~7 mm voxels over a whole torso


def _centroids_lps(labelmap: sitk.Image, labels: dict[str, int]) -> dict[str, np.ndarray]:
    """Physical centroid (LPS mm) of each target, through the image's own geometry."""
    arr = sitk.GetArrayFromImage(labelmap)
    out = {}
    for key, mask in phantoms.target_masks(arr, labels).items():
        zyx = np.argwhere(mask).mean(axis=0)
        # index -> physical is affine, so the centroid maps exactly
        out[key] = np.array(labelmap.TransformContinuousIndexToPhysicalPoint(zyx[::-1].tolist()))
    return out


@pytest.fixture(scope="module")
def ct_case():
    return phantoms.generate_case(11, "CT", orientation="LPS", max_voxels=SMALL)


def test_same_seed_gives_identical_arrays():
    a_img, a_lab, a_info = phantoms.generate_case(5, "MR-T2", max_voxels=60_000)
    b_img, b_lab, b_info = phantoms.generate_case(5, "MR-T2", max_voxels=60_000)
    assert sitk.GetArrayFromImage(a_img).tobytes() == sitk.GetArrayFromImage(b_img).tobytes()
    assert sitk.GetArrayFromImage(a_lab).tobytes() == sitk.GetArrayFromImage(b_lab).tobytes()
    assert a_img.GetDirection() == b_img.GetDirection() and a_img.GetOrigin() == b_img.GetOrigin()
    assert a_info == b_info
    c_img, _, _ = phantoms.generate_case(6, "MR-T2", max_voxels=60_000)
    assert sitk.GetArrayFromImage(c_img).tobytes() != sitk.GetArrayFromImage(a_img).tobytes()


def test_all_structures_present_with_plausible_volumes(ct_case):
    image, labelmap, info = ct_case
    expected = set(phantoms.LABELS) - {"fdg_avid_lesion"}
    assert set(info["labels"]) == expected
    assert info["modality"] == "CT" and info["seed"] == 11
    assert labelmap.GetSize() == image.GetSize() and labelmap.GetDirection() == image.GetDirection()
    vol = info["volumes_ml"]
    # adult ranges, widened for the ~6 mm voxels of this small case
    ranges = {"liver": (700, 3000), "spleen": (60, 500), "kidney_left": (50, 350),
              "kidney_right": (50, 350), "stomach": (80, 700), "aorta": (50, 450),
              "vertebrae": (150, 1300), "lung_left": (600, 4500), "lung_right": (600, 4500),
              "heart": (250, 1300), "urinary_bladder": (60, 600), "liver_tumor": (0.01, 200)}
    for key, (lo, hi) in ranges.items():
        assert lo <= vol[key] <= hi, (key, vol[key])


@pytest.fixture(scope="module")
def lps_reference() -> dict[str, np.ndarray]:
    _, labelmap, info = phantoms.generate_case(3, "CT", orientation="LPS", max_voxels=SMALL)
    return _centroids_lps(labelmap, info["labels"])


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "permuted", "oblique"])
def test_layout_is_anatomical_in_physical_lps(orientation, lps_reference):
    image, labelmap, info = phantoms.generate_case(3, "CT", orientation=orientation, max_voxels=SMALL)
    assert info["orientation"] == orientation
    if orientation == "RAS":
        assert np.allclose(np.array(image.GetDirection()).reshape(3, 3), np.diag([-1, -1, 1]))
    c = _centroids_lps(labelmap, info["labels"])
    x, y, z = 0, 1, 2
    # patient's left is +x in LPS
    assert c["lung_left"][x] > c["lung_right"][x] + 80
    assert c["kidney_left"][x] > c["kidney_right"][x] + 80
    assert c["spleen"][x] > c["liver"][x] + 80
    assert c["stomach"][x] > c["liver"][x]
    assert c["aorta"][x] > c["vertebrae"][x]  # aorta runs left of the spine
    # posterior is +y: kidneys and spine behind the aorta, spleen behind the stomach
    assert c["kidney_left"][y] > c["aorta"][y] and c["kidney_right"][y] > c["aorta"][y]
    assert c["vertebrae"][y] > c["aorta"][y]
    assert c["spleen"][y] > c["stomach"][y]
    # superior is +z
    assert c["lung_right"][z] > c["liver"][z] > c["kidney_right"][z] > c["urinary_bladder"][z]
    assert c["heart"][z] > c["liver"][z]
    # the same patient stored differently sits at the same physical place
    ref = lps_reference
    for key in ("liver", "kidney_left", "heart", "urinary_bladder"):
        assert np.linalg.norm(c[key] - ref[key]) < 4.0, (key, c[key], ref[key])


def test_ct_intensities_are_hounsfield_like(ct_case):
    image, labelmap, info = ct_case
    arr = sitk.GetArrayFromImage(image).astype(float)
    masks = phantoms.target_masks(sitk.GetArrayFromImage(labelmap), info["labels"])
    med = {key: float(np.median(arr[m])) for key, m in masks.items()}
    assert med["lung_left"] < -650 and med["lung_right"] < -650
    assert 40 <= med["liver"] <= 130
    assert 30 <= med["spleen"] <= 140
    assert 20 <= med["kidney_left"] <= 240
    assert 30 <= med["aorta"] <= 260
    assert med["vertebrae"] >= 200
    assert -20 <= med["urinary_bladder"] <= 50
    assert arr[:, :3, :3].mean() < -900  # air outside the body
    assert arr.dtype.kind == "f" and sitk.GetArrayViewFromImage(image).dtype == np.int16


def test_pet_lesions_are_hot_and_mr_contrasts_plausible():
    image, labelmap, info = phantoms.generate_case(2, "PET", max_voxels=SMALL)
    arr = sitk.GetArrayFromImage(image)
    masks = phantoms.target_masks(sitk.GetArrayFromImage(labelmap), info["labels"])
    assert "fdg_avid_lesion" in info["labels"] and "liver_tumor" not in info["labels"]
    liver = float(np.median(arr[masks["liver"]]))
    assert 1.0 < liver < 4.0
    assert float(arr[masks["fdg_avid_lesion"]].max()) > 1.5 * liver
    assert float(np.median(arr[masks["urinary_bladder"]])) > 2 * liver
    for modality, bright, dark in (("MR-T2", "urinary_bladder", "liver"), ("MR-T1", "liver", "urinary_bladder")):
        image, labelmap, info = phantoms.generate_case(2, modality, max_voxels=SMALL)
        arr = sitk.GetArrayFromImage(image)
        masks = phantoms.target_masks(sitk.GetArrayFromImage(labelmap), info["labels"])
        assert np.median(arr[masks[bright]]) > 1.5 * np.median(arr[masks[dark]]), modality


def test_target_masks_and_dataset_relabel_keep_the_tumour_in_the_liver():
    lab = np.array([0, 1, 2, 3, 13], np.uint8)
    masks = phantoms.target_masks(lab, {"liver": 1, "liver_tumor": 2, "spleen": 3})
    assert masks["liver"].tolist() == [False, True, True, False, False]
    assert masks["liver_tumor"].tolist() == [False, False, True, False, False]
    # tumour not annotated: it is liver; annotated: it keeps its own label
    assert phantoms.dataset_labelmap(lab, ["spleen", "liver"]).tolist() == [0, 2, 2, 1, 0]
    assert phantoms.dataset_labelmap(lab, ["liver", "liver_tumor"]).tolist() == [0, 1, 2, 0, 0]


def test_pseudo_datasets_layout_and_partial_labels(tmp_path: Path):
    written = phantoms.write_pseudo_datasets(tmp_path / "out", cases_per_dataset=1, seed=4,
                                             max_voxels=40_000)
    assert written[-1].name == "phantom_config.yaml" and len(written) == len(phantoms.PSEUDO_DATASETS) + 1
    config = yaml.safe_load(written[-1].read_text())
    assert [d["name"] for d in config["datasets"]] == [spec[1] for spec in phantoms.PSEUDO_DATASETS]
    for entry, (ds_id, name, modality, _, targets) in zip(config["datasets"], phantoms.PSEUDO_DATASETS):
        folder = tmp_path / "out" / entry["path"]
        assert entry["path"] == f"Dataset{ds_id:03d}_{name}" and entry["modality"] == modality
        assert entry["labels"] == {i + 1: key for i, key in enumerate(targets)} and entry["weight"] == 1.0
        meta = json.loads((folder / "dataset.json").read_text())
        assert meta["channel_names"] == {"0": modality} and meta["file_ending"] == ".nii.gz"
        assert meta["numTraining"] == 1
        assert meta["labels"] == {"background": 0, **{key: i + 1 for i, key in enumerate(targets)}}
        assert meta["hermes"]["modality"] == modality
        assert meta["hermes"]["targets"] == {str(i + 1): key for i, key in enumerate(targets)}
        unannotated = set(phantoms.LABELS) - set(targets)
        assert not unannotated & set(meta["labels"])
        image = sitk.ReadImage(str(folder / "imagesTr" / "case_0000_0000.nii.gz"))
        label = sitk.ReadImage(str(folder / "labelsTr" / "case_0000.nii.gz"))
        assert image.GetSize() == label.GetSize()
        assert np.allclose(image.GetOrigin(), label.GetOrigin(), atol=1e-3)
        assert np.allclose(image.GetDirection(), label.GetDirection(), atol=1e-5)
        values = set(np.unique(sitk.GetArrayViewFromImage(label)).tolist())
        assert values <= set(meta["labels"].values()) and len(values) > 1
        assert not [p for p in folder.rglob(".*")], "temporary files left behind"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hermes-segment")
    cli_phantoms.add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_cli_single_case_and_bad_arguments(tmp_path: Path):
    assert cli_phantoms._MODALITIES == phantoms.MODALITIES
    assert cli_phantoms._REGIONS == tuple(phantoms.REGIONS)
    args = _parser().parse_args(["phantoms", "--out", str(tmp_path), "--single", "PET", "--name", "pet1",
                                 "--max-voxels", "30000", "--seed", "3"])
    assert args.func(args) == 0
    truth = json.loads((tmp_path / "pet1_truth.json").read_text())
    assert truth["modality"] == "PET" and truth["seed"] == 3
    image = sitk.ReadImage(str(tmp_path / "pet1.nii.gz"))
    label = sitk.ReadImage(str(tmp_path / "pet1_truth.nii.gz"))
    assert image.GetSize() == label.GetSize()
    for bad in (["--single", "CT"], ["--name", "x"], ["--single", "XR", "--name", "x"],
                ["--cases-per-dataset", "0"], ["--single", "CT", "--name", "a/b"]):
        args = _parser().parse_args(["phantoms", "--out", str(tmp_path), *bad])
        with pytest.raises(HermesError):
            args.func(args)


def test_domain_randomisation_varies_anatomy_and_appearance_far_more_and_stays_deterministic():
    """randomization=1 (the training phantoms of the bundled model): for the same seeds, organ
    intensities and sizes spread much more than in the standard phantoms; same seed, same bytes."""
    def stats(randomization):
        contrast, liver_ml = [], []  # liver - spleen (HU), liver volume
        for seed in range(10):
            image, labelmap, info = phantoms.generate_case(seed, "CT", orientation="LPS", max_voxels=60_000,
                                                           randomization=randomization)
            arr, lab = sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(labelmap)
            contrast.append(float(np.median(arr[lab == phantoms.LABELS["liver"]]))
                            - float(np.median(arr[lab == phantoms.LABELS["spleen"]])))
            liver_ml.append(info["volumes_ml"]["liver"])
        return np.std(contrast), np.std(liver_ml) / np.mean(liver_ml)

    standard, randomized = stats(0.0), stats(1.0)
    assert randomized[0] > 2 * standard[0] and randomized[1] > 2 * standard[1]
    a, a_lab, a_info = phantoms.generate_case(3, "MR-T1", max_voxels=60_000, randomization=1.0)
    b, b_lab, _ = phantoms.generate_case(3, "MR-T1", max_voxels=60_000, randomization=1.0)
    assert sitk.GetArrayFromImage(a).tobytes() == sitk.GetArrayFromImage(b).tobytes()
    assert sitk.GetArrayFromImage(a_lab).tobytes() == sitk.GetArrayFromImage(b_lab).tobytes()
    assert a_info["randomization"] == 1.0
    with pytest.raises(HermesError, match="randomization"):
        phantoms.generate_case(3, "CT", randomization=1.5)


def test_randomised_abdominal_fields_of_view_sometimes_hold_the_pelvis():
    """A CT model that never saw a pelvis takes pelvic structures for a kidney (the whole-torso
    phantom of `make demo`): randomised abdominal cases may reach the bladder, standard ones never."""
    def with_bladder(randomization):
        return sum("urinary_bladder" in phantoms.generate_case(seed, "CT", region="abdomen", orientation="LPS",
                                                                 max_voxels=20_000, supersample=False,
                                                                 randomization=randomization)[2]["volumes_ml"]
                   for seed in range(10))

    assert with_bladder(0.0) == 0
    assert 2 <= with_bladder(1.0) <= 8


def test_metaball_family_is_deterministic_per_seed_and_holds_the_ct_targets(tmp_path: Path):
    """The second, independent family (evaluation only): same seed, same bytes; every target there."""
    from HermesSegmentLib.phantoms import metaball

    a_img, a_lab, a_info = metaball.generate_metaball_case(7, max_voxels=150_000)
    b_img, b_lab, b_info = metaball.generate_metaball_case(7, max_voxels=150_000)
    assert sitk.GetArrayFromImage(a_img).tobytes() == sitk.GetArrayFromImage(b_img).tobytes()
    assert sitk.GetArrayFromImage(a_lab).tobytes() == sitk.GetArrayFromImage(b_lab).tobytes()
    assert a_img.GetOrigin() == b_img.GetOrigin() and a_info == b_info
    c_img, _, c_info = metaball.generate_metaball_case(8, max_voxels=150_000)
    assert sitk.GetArrayFromImage(c_img).tobytes() != sitk.GetArrayFromImage(a_img).tobytes()
    assert set(a_info["labels"]) == set(metaball.TARGETS) and a_info["volumes_ml"] != c_info["volumes_ml"]
    assert 600 < a_info["volumes_ml"]["liver"] < 3000 and 50 < a_info["volumes_ml"]["kidney_left"] < 400
    centroids = _centroids_lps(a_lab, a_info["labels"])
    assert centroids["kidney_left"][0] > 0 > centroids["kidney_right"][0]  # +x is the patient's left
    assert centroids["liver"][0] < 0 < centroids["spleen"][0]
    folder, config = metaball.write_metaball_dataset(tmp_path, cases=1, seed=3)
    entry = yaml.safe_load(config.read_text())["datasets"][0]
    assert entry["path"] == folder.name and set(entry["labels"].values()) == set(metaball.TARGETS)
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["case_0000_0000.nii.gz"]
