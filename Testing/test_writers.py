"""writers/: .seg.nrrd (checked with slicerio), NIfTI label maps, CSV, atomic writes."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
from slicerio.segmentation import terminology_entry_to_string

from HermesSegmentLib import writers
from HermesSegmentLib.errors import HermesError
from HermesSegmentLib.mask import TargetMask
from HermesSegmentLib.postprocess.to_input_grid import reference_geometry
from HermesSegmentLib.writers import nifti, seg_nrrd

LIVER_TERM = ("Segmentation category and type - 3D Slicer General Anatomy list"
              "~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^"
              "~Anatomic codes - DICOM master list~^^~^^")
TUMOR_TERM = ("Segmentation category and type - 3D Slicer General Anatomy list"
              "~SCT^49755003^Morphologically Altered Structure~SCT^108369006^Neoplasm~^^"
              "~Anatomic codes - DICOM master list~SCT^10200004^Liver~^^")
SPLEEN_TERM = ("Segmentation category and type - 3D Slicer General Anatomy list"
               "~SCT^123037004^Anatomical Structure~SCT^78961009^Spleen~^^"
               "~Anatomic codes - DICOM master list~^^~^^")
SHAPE = (12, 16, 20)  # z, y, x


def oblique_reference() -> sitk.Image:
    image = sitk.Image(SHAPE[::-1], sitk.sitkInt16)
    image.SetSpacing((0.8, 0.9, 2.5))
    angle = 0.4
    c, s = np.cos(angle), np.sin(angle)
    image.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, -1.0))  # rotated in-plane, z flipped
    image.SetOrigin((12.5, -30.25, 101.0))
    return reference_geometry(image)


def box_mask(key, name, color, term, lo, hi) -> TargetMask:
    return TargetMask(key, name, color, term, tuple(lo),
                      np.ones([high - low for low, high in zip(lo, hi)], dtype=bool))


def masks_with_overlap():
    liver = box_mask("liver", "Liver", (221, 130, 101), LIVER_TERM, (2, 3, 4), (10, 12, 14))
    tumor = box_mask("liver_tumor", "Liver tumor", (144, 238, 144), TUMOR_TERM, (4, 5, 6), (6, 8, 9))
    spleen = box_mask("spleen", "Spleen", (157, 108, 162), SPLEEN_TERM, (1, 1, 16), (5, 4, 19))
    return [liver, tumor, spleen]


def test_target_mask_helpers():
    m = box_mask("a", "A", (1, 2, 3), "", (1, 2, 3), (3, 5, 7))
    full = m.full(SHAPE)
    assert full.sum() == m.voxels == 2 * 3 * 4
    assert full[1:3, 2:5, 3:7].all()
    assert m.volume_ml((2.0, 1.0, 0.5)) == pytest.approx(24 * 1.0 / 1000)
    assert m.bbox() == (slice(1, 3), slice(2, 5), slice(3, 7))
    m.array[0] = False  # a cleanup emptied the first plane: the box shrinks, the crop does not
    assert m.bbox() == (slice(2, 3), slice(2, 5), slice(3, 7)) and m.slices[0] == slice(1, 3)
    cropped = TargetMask.cropped(m.full(SHAPE), key="a")
    assert (cropped.offset_zyx, cropped.array.shape, cropped.key) == ((2, 2, 3), (1, 3, 4), "a")
    assert TargetMask.cropped(np.zeros(SHAPE, bool)).array.shape == (0, 0, 0)
    image = m.image(sitk.Image(SHAPE[::-1], sitk.sitkUInt8))
    assert image.GetSize() == SHAPE[::-1] and sitk.GetArrayViewFromImage(image).sum() == m.voxels


def test_seg_nrrd_round_trip_with_slicerio_and_overlap(tmp_path):
    reference = oblique_reference()
    masks = masks_with_overlap()
    path = tmp_path / "case.seg.nrrd"
    writers.write_seg_nrrd(path, masks, reference)

    seg = slicerio.read_segmentation(str(path))
    assert [s["name"] for s in seg["segments"]] == ["Liver", "Liver tumor", "Spleen"]
    assert [s["id"] for s in seg["segments"]] == ["liver", "liver_tumor", "spleen"]
    assert terminology_entry_to_string(seg["segments"][0]["terminology"]) == LIVER_TERM
    assert terminology_entry_to_string(seg["segments"][1]["terminology"]) == TUMOR_TERM
    np.testing.assert_allclose(seg["segments"][0]["color"], np.array([221, 130, 101]) / 255, atol=1e-5)
    # Tumour overlaps liver -> second layer; spleen fits in layer 0 with the liver.
    assert [s["layer"] for s in seg["segments"]] == [0, 1, 0]
    assert seg["voxels"].ndim == 4

    # Geometry: slicerio's IJK->LPS equals the reference's direction x spacing and origin.
    ijk_to_lps = np.asarray(seg["ijkToLPS"])
    expected = np.asarray(reference.GetDirection()).reshape(3, 3) * reference.GetSpacing()
    np.testing.assert_allclose(ijk_to_lps[:3, :3], expected, atol=1e-12)
    np.testing.assert_allclose(ijk_to_lps[:3, 3], reference.GetOrigin(), atol=1e-12)

    # Every segment's voxels (slicerio: [layer?, i, j, k] in x,y,z order) are exactly ours.
    for mask, info in zip(masks, seg["segments"]):
        got = slicerio.segment_mask(seg, info)        # x, y, z
        np.testing.assert_array_equal(got.transpose(2, 1, 0) > 0, mask.full(SHAPE))
        box = mask.bbox()
        assert info["extent"] == [box[2].start, box[2].stop - 1, box[1].start, box[1].stop - 1,
                                  box[0].start, box[0].stop - 1]

    # And our own reader gives back the same masks and geometry.
    back, ref_back = writers.read_seg_nrrd(path)
    assert [m.key for m in back] == ["liver", "liver_tumor", "spleen"]
    for a, b in zip(masks, back):
        assert (a.name, a.color, a.terminology) == (b.name, b.color, b.terminology)
        np.testing.assert_array_equal(a.full(SHAPE), b.full(SHAPE))
    assert ref_back.GetSize() == reference.GetSize()
    np.testing.assert_allclose(ref_back.GetOrigin(), reference.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(ref_back.GetDirection(), reference.GetDirection(), atol=1e-9)
    np.testing.assert_allclose(ref_back.GetSpacing(), reference.GetSpacing(), atol=1e-9)


def test_seg_nrrd_without_overlap_is_3d_and_keeps_empty_targets(tmp_path):
    reference = oblique_reference()
    liver, _, spleen = masks_with_overlap()
    empty = TargetMask("kidney", "Kidney", (185, 102, 83), "", (0, 0, 0), np.zeros((0, 0, 0), bool))
    path = tmp_path / "case.seg.nrrd"
    writers.write_seg_nrrd(path, [liver, spleen, empty], reference)
    seg = slicerio.read_segmentation(str(path))
    assert seg["voxels"].ndim == 3
    assert [s["labelValue"] for s in seg["segments"]] == [1, 2, 3]
    assert seg["segments"][2]["extent"] == [0, -1, 0, -1, 0, -1]
    back, _ = writers.read_seg_nrrd(path)
    assert back[2].voxels == 0 and back[0].voxels == liver.voxels


def test_read_seg_nrrd_missing_file(tmp_path):
    with pytest.raises(HermesError, match="cannot read the segmentation"):
        writers.read_seg_nrrd(tmp_path / "none.seg.nrrd")


def test_nifti_priority_later_target_wins(tmp_path):
    reference = oblique_reference()
    masks = masks_with_overlap()
    written = writers.write_label_map_nifti(tmp_path / "case.nii.gz", masks, reference)
    assert [p.name for p in written] == ["case.nii.gz", "case.json"]
    image = sitk.ReadImage(str(written[0]))
    labels = sitk.GetArrayFromImage(image)
    assert labels.dtype == np.uint8
    assert labels[5, 6, 7] == 2           # tumour (listed after the liver) wins where both are
    assert labels[3, 4, 5] == 1
    assert labels[2, 2, 17] == 3
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection(), atol=1e-6)
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    sidecar = json.loads(written[1].read_text())
    assert [(e["value"], e["key"]) for e in sidecar["labels"]] == [(1, "liver"), (2, "liver_tumor"),
                                                                  (3, "spleen")]
    assert sidecar["labels"][0]["hidden_voxels"] == masks[1].voxels
    assert sidecar["labels"][2]["color"] == [157, 108, 162]


def test_nifti_per_target_keeps_overlaps(tmp_path):
    masks = masks_with_overlap()
    written = writers.write_label_map_nifti(tmp_path / "case.nii.gz", masks, oblique_reference(),
                                            overlap_policy="per_target")
    assert [p.name for p in written] == ["case_liver.nii.gz", "case_liver_tumor.nii.gz",
                                         "case_spleen.nii.gz", "case.json"]
    for mask, file in zip(masks, written):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(file))) == 1,
                                      mask.full(SHAPE))


def test_probability_maps(tmp_path):
    prob = np.linspace(0, 1, np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)
    written = writers.write_probability_maps(tmp_path / "case", [("liver", prob)], oblique_reference())
    assert [p.name for p in written] == ["case_liver_prob.nii.gz"]
    back = sitk.GetArrayFromImage(sitk.ReadImage(str(written[0])))
    assert back.dtype == np.uint8 and back.max() == 255 and back.min() == 0


def test_summary_csv_has_one_header_and_one_row_per_case_and_target(tmp_path):
    path = tmp_path / "summary.csv"
    writers.write_summary_rows(path, "a", [{"case": "a", "target": "liver", "voxels": 10,
                                            "volume_ml": 1.5, "seconds": 2.0}])
    writers.write_summary_rows(path, "b", [{"case": "b", "target": "liver", "voxels": 0,
                                            "volume_ml": 0.0, "seconds": 1.0}])
    writers.write_summary_rows(path, "a", [{"case": "a", "target": "liver", "voxels": 12,
                                            "volume_ml": 1.8, "seconds": 2.0}])
    rows = list(csv.DictReader(path.open()))
    assert [(r["case"], r["voxels"]) for r in rows] == [("b", "0"), ("a", "12")]
    assert list(rows[0]) == list(writers.SUMMARY_COLUMNS)
    bad = tmp_path / "other.csv"
    bad.write_text("x,y\n1,2\n")
    with pytest.raises(HermesError, match="other columns"):
        writers.write_summary_rows(bad, "a", [])


def test_failed_writes_leave_no_partial_file(tmp_path, monkeypatch):
    reference = oblique_reference()
    masks = masks_with_overlap()

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(nifti, "write_image", boom)
    with pytest.raises(RuntimeError):
        writers.write_label_map_nifti(tmp_path / "case.nii.gz", masks, reference)
    with pytest.raises(RuntimeError):
        writers.write_label_map_nifti(tmp_path / "case.nii.gz", masks, reference,
                                      overlap_policy="per_target")

    monkeypatch.setattr(seg_nrrd, "_seg_slab", boom)
    with pytest.raises(RuntimeError):
        writers.write_seg_nrrd(tmp_path / "case.seg.nrrd", masks, reference)
    assert list(tmp_path.iterdir()) == []

    # An existing file is left untouched by a failed rewrite.
    monkeypatch.undo()
    writers.write_seg_nrrd(tmp_path / "case.seg.nrrd", masks, reference)
    before = (tmp_path / "case.seg.nrrd").read_bytes()
    monkeypatch.setattr(seg_nrrd, "_seg_slab", boom)
    with pytest.raises(RuntimeError):
        writers.write_seg_nrrd(tmp_path / "case.seg.nrrd", masks[:1], reference)
    assert (tmp_path / "case.seg.nrrd").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["case.seg.nrrd"]


def test_a_new_output_format_is_one_class_and_one_registry_line(monkeypatch, tmp_path, tiny_package):
    """The extension point works end to end: `hermes-segment segment --format` offers and writes it."""
    from HermesSegmentLib.cli import main as cli_main
    from HermesSegmentLib.writers import FORMATS, SegmentationWriter

    class VolumesJson(SegmentationWriter):
        name, suffix, description = "volumes-json", ".volumes.json", "voxel counts per target"

        def write(self, path, masks, reference, *, overlap_policy="priority"):
            path.write_text(json.dumps({m.key: m.voxels for m in masks}))

    monkeypatch.setitem(FORMATS, VolumesJson.name, VolumesJson())  # the one registry line
    image = sitk.GetImageFromArray(np.where(np.indices((20, 24, 24)).sum(0) > 30, 40, -1000).astype(np.int16))
    image.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(image, str(tmp_path / "case.nii.gz"))
    assert cli_main(["segment", str(tmp_path / "case.nii.gz"), "--modality", "CT", "--targets", "liver,spleen",
                     "--model", str(tiny_package), "--out", str(tmp_path / "out"), "--format", "volumes-json",
                     "--device", "cpu"]) == 0
    written = json.loads((tmp_path / "out" / "case.volumes.json").read_text())
    assert set(written) == {"liver", "spleen"} and all(isinstance(v, int) for v in written.values())
