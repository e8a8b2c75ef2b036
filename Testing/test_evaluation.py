"""Tests for evaluation (metrics, conventions, file forms, case matching) and `hermes-segment evaluate`."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from HermesSegmentLib import cli, evaluation, writers
from HermesSegmentLib.errors import HermesError
from HermesSegmentLib.mask import TargetMask
from HermesSegmentLib.phantoms import target_masks

SHAPE = (16, 24, 20)  # [z, y, x]
SPACING_XYZ = (1.0, 1.0, 2.0)


def reference(shape=SHAPE, spacing_xyz=SPACING_XYZ, origin=(10.0, -5.0, 3.0)) -> sitk.Image:
    image = sitk.Image(shape[::-1], sitk.sitkUInt8)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin(origin)
    return image


def sphere(shape, center_zyx, radius_mm, spacing_zyx) -> np.ndarray:
    z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip((z, y, x), center_zyx, spacing_zyx))
    return d2 <= radius_mm ** 2


def box(lo, hi, shape=SHAPE) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return out


def target(key: str, array: np.ndarray) -> TargetMask:
    return TargetMask(key=key, name=key.title(), color=(200, 100, 50), terminology="",
                              offset_zyx=(0, 0, 0), array=array)


def write_labelmap(path, array, ref) -> None:
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(ref)
    sitk.WriteImage(image, str(path))


def read_csv(path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------
# Metrics


def test_identical_masks_are_perfect():
    mask = sphere(SHAPE, (8, 12, 10), 5.0, (2.0, 1.0, 1.0))
    (row,) = evaluation.evaluate_masks({"liver": mask}, {"liver": mask.copy()}, (2.0, 1.0, 1.0))
    assert row["target"] == "liver"
    assert row["dice"] == pytest.approx(1.0) and row["hd95_mm"] == 0.0
    assert row["surface_dice"] == pytest.approx(1.0)
    assert row["pred_ml"] == row["truth_ml"] == pytest.approx(mask.sum() * 2.0 / 1000)


@pytest.mark.parametrize("k", [1, 2])
def test_shifted_sphere_matches_analytic_values(k):
    """A sphere of radius r shifted by d mm: Dice = overlap / volume (two-sphere lens), HD95 ~ d."""
    spacing = (2.0, 1.0, 1.0)  # the shift is along z, so the spacing must be honoured
    shape, r = (24, 40, 40), 9.0
    truth = sphere(shape, (12, 20, 20), r, spacing)
    pred = sphere(shape, (12 + k, 20, 20), r, spacing)
    d = k * spacing[0]
    lens = math.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    (row,) = evaluation.evaluate_masks({"s": pred}, {"s": truth}, spacing, tolerance_mm=d)
    assert row["dice"] == pytest.approx(lens / (4 / 3 * math.pi * r ** 3), abs=0.02)
    assert 0.9 * d <= row["hd95_mm"] <= d + 0.5
    assert row["surface_dice"] == pytest.approx(1.0)  # every surface point within d of the other
    (tight,) = evaluation.evaluate_masks({"s": pred}, {"s": truth}, spacing, tolerance_mm=d / 2)
    assert tight["surface_dice"] < 0.95


@pytest.mark.filterwarnings("ignore::FutureWarning")  # MONAI's own deprecated internal argument
def test_crop_gives_monai_full_volume_result():
    """The union-box crop is only for speed: same numbers as MONAI on the whole grid, also for
    masks touching the border."""
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    spacing = (2.0, 1.0, 1.0)
    truth = box((0, 3, 2), (7, 12, 9)) | sphere(SHAPE, (10, 16, 14), 4.0, spacing)
    pred = box((1, 4, 0), (8, 14, 9))
    (row,) = evaluation.evaluate_masks({"t": pred}, {"t": truth}, spacing, tolerance_mm=1.5)
    p, g = (torch.from_numpy(m)[None, None].float() for m in (pred, truth))
    hd = compute_hausdorff_distance(p, g, include_background=True, percentile=95, spacing=list(spacing))
    nsd = compute_surface_dice(p, g, [1.5], include_background=True, spacing=list(spacing))
    assert row["hd95_mm"] == pytest.approx(float(hd))
    assert row["surface_dice"] == pytest.approx(float(nsd))
    assert row["dice"] == pytest.approx(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))


def test_empty_masks_follow_the_conventions():
    empty, some = np.zeros(SHAPE, bool), box((2, 2, 2), (5, 5, 5))
    rows = evaluation.evaluate_masks({"a": empty, "b": empty, "c": some},
                                     {"a": empty, "b": some, "c": empty, "d": some}, (1, 1, 1))
    by = {r["target"]: r for r in rows}
    assert (by["a"]["dice"], by["a"]["hd95_mm"], by["a"]["surface_dice"]) == (1.0, 0.0, 1.0)
    for key in "bcd":  # d is missing from the prediction: an empty prediction
        assert (by[key]["dice"], by[key]["hd95_mm"], by[key]["surface_dice"]) == (0.0, math.inf, 0.0)
    assert by["d"]["pred_ml"] == 0.0

    summary = {s["target"]: s for s in evaluation.summarize(
        [{"target": "x", "dice": 1.0, "hd95_mm": 2.0, "surface_dice": 1.0},
         {"target": "x", "dice": 0.0, "hd95_mm": math.inf, "surface_dice": 0.0},
         {"target": "y", "dice": 0.0, "hd95_mm": math.nan, "surface_dice": 0.0}])}
    assert summary["x"]["cases"] == 2 and summary["x"]["dice"] == 0.5
    assert summary["x"]["hd95_mm"] == 2.0 and summary["x"]["hd95_mm_left_out"] == 1
    assert math.isnan(summary["y"]["hd95_mm"])


# ---------------------------------------------------------------------------------------------
# Files and cases


def test_case_names_and_channel_suffix(tmp_path):
    assert evaluation.case_name("dir/case_0001.seg.nrrd") == "case_0001"
    assert evaluation.case_name("Patient 7.MHA") == "Patient 7"
    pred, truth = tmp_path / "pred", tmp_path / "truth"
    pred.mkdir(), truth.mkdir()
    for name in ("case_0000_0000.seg.nrrd", "case_0001.nii.gz", "extra.nii.gz"):
        (pred / name).touch()
    for name in ("case_0000.nii.gz", "case_0001.nii.gz", "case_0002.nii.gz", "case_0000.json"):
        (truth / name).touch()  # the .json is a sidecar, not a case
    pairs, no_pred, no_truth = evaluation.match_cases(pred, truth)
    assert [(c, p.name, t.name) for c, p, t in pairs] == [
        ("case_0000", "case_0000_0000.seg.nrrd", "case_0000.nii.gz"),
        ("case_0001", "case_0001.nii.gz", "case_0001.nii.gz")]
    assert (no_pred, no_truth) == (["case_0002"], ["extra"])


def test_label_table_normalises_names_and_liver_contains_tumor():
    table = evaluation.read_label_table(
        {"labels": {"background": 0, "Liver": 1, "liver tumour": 2, "Kidney_Left": 3, "my_custom": [4, 5]}})
    assert table == {"liver": (1, 2), "liver_tumor": (2,), "kidney_left": (3,), "my_custom": (4, 5)}
    labels = np.array([[[0, 1, 2, 3, 4, 5]]])
    expected = target_masks(labels, {"liver": 1, "liver_tumor": 2})
    assert np.array_equal(np.isin(labels, table["liver"]), expected["liver"])


def test_seg_nrrd_prediction_folder_against_nnunet_label_maps(tmp_path):
    """Folders paired by case name (_0000 dropped); .seg.nrrd vs label maps named by --labels;
    the liver truth includes the tumour label, as the predicted liver segment does."""
    ref = reference()
    liver = box((2, 3, 3), (12, 15, 14))
    tumor = box((5, 6, 6), (8, 9, 9))
    kidney = box((3, 17, 10), (9, 22, 16))
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "labelsTr"
    pred_dir.mkdir(), gt_dir.mkdir()
    truth = np.zeros(SHAPE, np.uint8)
    truth[liver], truth[tumor], truth[kidney] = 1, 2, 3
    for case in ("case_0000", "case_0001"):
        write_labelmap(gt_dir / f"{case}.nii.gz", truth, ref)
    write_labelmap(gt_dir / "case_0002.nii.gz", truth, ref)  # no prediction
    writers.write_seg_nrrd(pred_dir / "case_0000_0000.seg.nrrd",
                           [target("liver", liver), target("liver_tumor", tumor), target("kidney_left", kidney)], ref)
    shifted = np.roll(kidney, 2, axis=2)
    writers.write_seg_nrrd(pred_dir / "case_0001.seg.nrrd",
                           [target("liver", liver), target("kidney_left", shifted)], ref)
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"labels": {"background": 0, "liver": 1, "liver_tumor": 2, "Kidney_Left": 3}}))
    out = tmp_path / "metrics.csv"

    assert cli.main(["evaluate", str(pred_dir), str(gt_dir), "--labels", str(dataset), "--out", str(out)]) == 0
    rows = {(r["case"], r["target"]): r for r in read_csv(out)}
    assert list(read_csv(out)[0]) == list(evaluation.METRIC_COLUMNS)
    # default targets: predicted and annotated per case (case_0001 has no tumour segment)
    assert set(rows) == {("case_0000", "liver"), ("case_0000", "liver_tumor"), ("case_0000", "kidney_left"),
                         ("case_0001", "liver"), ("case_0001", "kidney_left")}
    assert float(rows["case_0000", "liver"]["dice"]) == 1.0  # tumour voxels are liver truth too
    assert float(rows["case_0000", "liver"]["truth_ml"]) == pytest.approx(liver.sum() * 2.0 / 1000, abs=1e-3)
    assert float(rows["case_0000", "liver_tumor"]["hd95_mm"]) == 0.0
    assert float(rows["case_0001", "kidney_left"]["dice"]) == pytest.approx(2 * 4 / 12, abs=1e-4)
    assert float(rows["case_0001", "kidney_left"]["hd95_mm"]) == pytest.approx(2.0)  # x spacing 1 mm

    # --targets: a tumour missing from a prediction is an empty prediction, honestly inf
    assert cli.main(["evaluate", str(pred_dir), str(gt_dir), "--labels", str(dataset), "--out", str(out),
                     "--targets", "Liver Tumor"]) == 0
    by_case = {r["case"]: r for r in read_csv(out)}
    assert by_case["case_0001"]["hd95_mm"] == "inf" and float(by_case["case_0001"]["dice"]) == 0.0


def test_sidecar_label_map_prediction_against_seg_nrrd_truth(tmp_path, capsys):
    """Our own NIfTI label map (+ sidecar) as the prediction, single files paired whatever their names."""
    ref = reference()
    spleen, empty = box((4, 4, 4), (10, 10, 10)), np.zeros(SHAPE, bool)
    writers.write_label_map_nifti(tmp_path / "result.nii.gz", [target("spleen", spleen), target("aorta", empty)], ref)
    writers.write_seg_nrrd(tmp_path / "truth.seg.nrrd", [target("spleen", spleen), target("aorta", empty)], ref)
    out = tmp_path / "m.csv"
    assert cli.main(["evaluate", str(tmp_path / "result.nii.gz"), str(tmp_path / "truth.seg.nrrd"),
                     "--out", str(out)]) == 0
    rows = {r["target"]: r for r in read_csv(out)}
    assert rows["spleen"]["case"] == "truth"
    assert float(rows["spleen"]["dice"]) == 1.0
    assert (float(rows["aorta"]["dice"]), float(rows["aorta"]["hd95_mm"])) == (1.0, 0.0)  # both empty
    printed = capsys.readouterr().out
    assert "spleen" in printed and "1.0000" in printed


def test_per_target_files_are_one_case(tmp_path):
    ref = reference()
    a, b = box((2, 2, 2), (8, 8, 8)), box((5, 5, 5), (12, 12, 12))  # overlapping targets
    pred = tmp_path / "pred"
    pred.mkdir()
    writers.write_label_map_nifti(pred / "case1.nii.gz", [target("liver", a), target("liver_tumor", b)], ref,
                                  overlap_policy="per_target")
    assert evaluation.find_cases(pred) == {"case1": pred / "case1.json"}
    masks = evaluation.load_masks(pred / "case1.json")
    assert masks.targets == ("liver", "liver_tumor")
    assert np.array_equal(masks.mask("liver_tumor"), b)


def test_unusual_reference_volumes_are_named(tmp_path, capsys):
    """Six cases whose spleen references are boxes of 120 voxels, except one of 960 (8x: another structure
    under the organ's name) and one of 24 (1/5: contoured on a few slices); the 2x one is not flagged.
    The note names both; the flagged rows stay in the means and the CSV."""
    ref = reference()
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    pred_dir.mkdir(), gt_dir.mkdir()
    usual = box((2, 2, 2), (7, 8, 6))  # 5 x 6 x 4 = 120 voxels
    truths = {"c0": usual, "c1": usual, "c2": usual, "c3": box((2, 2, 2), (12, 8, 8)),  # 10 x 6 x 6 = 360: 3x
              "c4": box((2, 2, 2), (14, 22, 7)),  # 12 x 20 x 5 = 1200: 10x
              "c5": box((2, 2, 2), (3, 6, 8))}  # 1 x 4 x 6 = 24: 1/5
    for case, truth in truths.items():
        write_labelmap(gt_dir / f"{case}.nii.gz", truth, ref)
        write_labelmap(pred_dir / f"{case}.nii.gz", usual, ref)
    dataset = tmp_path / "dataset.json"
    dataset.write_text(json.dumps({"labels": {"background": 0, "spleen": 1}}))
    out = tmp_path / "metrics.csv"

    assert cli.main(["evaluate", str(pred_dir), str(gt_dir), "--labels", str(dataset), "--out", str(out)]) == 0
    note = [line for line in capsys.readouterr().err.splitlines() if "reference contour" in line]
    assert len(note) == 1 and "2 reference contour(s)" in note[0]
    assert "c4 spleen" in note[0] and "c5 spleen" in note[0] and "c3" not in note[0]
    assert note[0].index("c4 spleen") < note[0].index("c5 spleen")  # largest deviation first
    assert len(read_csv(out)) == 6

    flagged = evaluation.unusual_references(read_csv(out))
    assert [(f["case"], round(f["ratio"], 3)) for f in flagged] == [("c4", 10.0), ("c5", 0.2)]
    assert flagged[0]["median_ml"] == pytest.approx(120 * 2.0 / 1000)  # median of 24,120,120,120,360,1200 voxels
    assert evaluation.unusual_references(read_csv(out)[:4]) == []  # fewer than five cases: no median to trust


# ---------------------------------------------------------------------------------------------
# User mistakes: one line, exit status 2


def test_geometry_mismatch_is_a_one_line_error(tmp_path, capsys):
    mask = box((2, 2, 2), (6, 6, 6))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"labels": {"liver": 1}}))
    write_labelmap(tmp_path / "pred.nii.gz", mask, reference(spacing_xyz=(1.5, 1.5, 2.0)))
    write_labelmap(tmp_path / "gt.nii.gz", mask, reference())
    status = cli.main(["evaluate", str(tmp_path / "pred.nii.gz"), str(tmp_path / "gt.nii.gz"), "--labels", str(labels),
                       "--out", str(tmp_path / "m.csv")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and "\n" not in err
    assert err.startswith("error:") and "spacing" in err and "resample" in err
    assert not (tmp_path / "m.csv").exists()


@pytest.mark.parametrize("extra, expected", [
    ([], "without label names"),  # a label map with neither sidecar nor --labels
    (["--labels", "{labels}", "--targets", "livr"], "did you mean: liver"),
    (["--labels", "{labels}", "--tolerance-mm", "0"], "--tolerance-mm"),
])
def test_user_mistakes(tmp_path, capsys, extra, expected):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"labels": {"liver": 1}}))
    write_labelmap(tmp_path / "pred.nii.gz", box((2, 2, 2), (6, 6, 6)), reference())
    write_labelmap(tmp_path / "gt.nii.gz", box((2, 2, 2), (6, 6, 6)), reference())
    args = [str(tmp_path / "pred.nii.gz"), str(tmp_path / "gt.nii.gz"), "--out", str(tmp_path / "m.csv")]
    status = cli.main(["evaluate"] + args + [a.format(labels=labels) for a in extra])
    err = capsys.readouterr().err.strip()
    assert status == 2 and expected in err and "\n" not in err


def test_an_image_is_not_a_label_map(tmp_path):
    ct = sitk.GetImageFromArray(np.full(SHAPE, -1000, np.int16))
    ct.CopyInformation(reference())
    sitk.WriteImage(ct, str(tmp_path / "ct_0000.nii.gz"))
    with pytest.raises(HermesError, match="negative values"):
        evaluation.load_masks(tmp_path / "ct_0000.nii.gz", {"liver": (1,)})


def test_unmatched_folders(tmp_path, capsys):
    (tmp_path / "p").mkdir(), (tmp_path / "g").mkdir()
    write_labelmap(tmp_path / "p" / "a.nii.gz", box((2, 2, 2), (6, 6, 6)), reference())
    write_labelmap(tmp_path / "g" / "b.nii.gz", box((2, 2, 2), (6, 6, 6)), reference())
    assert cli.main(["evaluate", str(tmp_path / "p"), str(tmp_path / "g")]) == 2
    assert "no case name is in both" in capsys.readouterr().err


def test_every_public_evaluation_name_resolves_on_first_use():
    from HermesSegmentLib import evaluation

    assert all(callable(getattr(evaluation, name)) or name in ("CASE_SUFFIXES", "METRIC_COLUMNS")
               for name in evaluation.__all__)
    with pytest.raises(AttributeError):
        evaluation.no_such_name  # noqa: B018


@pytest.mark.parametrize("out, expected", [
    ("gt.nii.gz", "must end in .csv"),  # the ground truth itself: never written over
    ("labels.json", "must end in .csv"),
    ("folder", "is a folder"),
    ("missing/m.csv", "does not exist"),
])
def test_out_that_is_an_input_or_a_folder_fails_before_the_work_and_touches_nothing(tmp_path, capsys, out, expected):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"labels": {"liver": 1}}))
    (tmp_path / "folder").mkdir()
    write_labelmap(tmp_path / "pred.nii.gz", box((2, 2, 2), (6, 6, 6)), reference())
    write_labelmap(tmp_path / "gt.nii.gz", box((2, 2, 2), (6, 6, 6)), reference())
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    status = cli.main(["evaluate", str(tmp_path / "pred.nii.gz"), str(tmp_path / "gt.nii.gz"), "--labels", str(labels),
                       "--out", str(tmp_path / out)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error:") and expected in err and "\n" not in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert list((tmp_path / "folder").iterdir()) == []
