"""Issue 11, kinds of input that already worked, kept working: -3024 padding outside the scan
circle, compressed DICOM, non-ASCII paths, a full disk; and a Slicer volume under a non-linear
transform (docs/robustness.md lists all kinds)."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import SimpleITK as sitk

from generated_inputs import SeriesHeader, as_image, body_ct, write_dicom_slice
from HermesSegmentLib.cli import main as cli_main
from HermesSegmentLib.pipeline import segment_image
from HermesSegmentLib.read import read_image


def test_padding_at_minus_3024_outside_the_scan_circle_is_hounsfield(tiny_package):
    array = body_ct(seed=20)
    z, y, x = np.mgrid[: array.shape[0], : array.shape[1], : array.shape[2]]
    array[(x - array.shape[2] / 2) ** 2 + (y - array.shape[1] / 2) ** 2 > (array.shape[1] / 2) ** 2] = -3024
    result = segment_image(as_image(array), modality="CT", targets="all", model=tiny_package, device="cpu",
                           precision="float32")
    assert result.warnings == []


def test_a_compressed_dicom_series_reads_as_the_uncompressed_one(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.uid import RLELossless

    volume = body_ct(shape_zyx=(6, 32, 40), seed=21)
    header = SeriesHeader(series_uid="1.2.826.0.1.3680043.2.1125.9.7", study_uid="1.2.826.0.1.3680043.2.1125.9.8")
    for folder, compress in (("plain", False), ("rle", True)):
        for k, plane in enumerate(volume):
            path = tmp_path / folder / f"{k}.dcm"
            path.parent.mkdir(exist_ok=True)
            write_dicom_slice(path, (plane.astype(np.int32) + 1024).astype(np.int16), header, instance=k + 1,
                              position=(0.0, 0.0, 2.5 * k), orientation=(1, 0, 0, 0, 1, 0), pixel_spacing=(0.8, 0.8))
            if compress:
                ds = pydicom.dcmread(path)
                ds.compress(RLELossless)
                ds.save_as(path)
    plain, rle = read_image(tmp_path / "plain"), read_image(tmp_path / "rle")
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(rle), sitk.GetArrayViewFromImage(plain))
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(plain), volume)


def test_non_ascii_paths(tmp_path, tiny_package):
    folder = tmp_path / "Patient Müller – 東京"
    folder.mkdir()
    sitk.WriteImage(as_image(body_ct(seed=22)), str(folder / "Schädel ÄÖÜ.nii.gz"))
    out = tmp_path / "résultats"
    assert cli_main(["segment", str(folder), "--modality", "CT", "--model", str(tiny_package), "--out", str(out),
                     "--device", "cpu"]) == 0
    assert (out / "Schädel ÄÖÜ.seg.nrrd").is_file()


def test_a_full_disk_fails_the_case_and_leaves_nothing(tmp_path, tiny_package, monkeypatch, capsys):
    sitk.WriteImage(as_image(body_ct(seed=23)), str(tmp_path / "ct.nii.gz"))
    real_open = open

    def full_disk(file, mode="r", *args, **kwargs):
        if "w" in mode and ".seg.nrrd" in str(file):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk)
    status = cli_main(["segment", str(tmp_path / "ct.nii.gz"), "--modality", "CT", "--model", str(tiny_package),
                       "--out", str(tmp_path / "out"), "--device", "cpu"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert status == 1 and "No space left on device" in err and "please report" not in err, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == []


@pytest.mark.slicer
def test_a_volume_under_a_regularization_transform_is_warned_about(caplog):
    """In Slicer, a tilted or unequally spaced DICOM series is loaded under a non-linear
    'acquisition geometry regularization' transform: the panel and the console API say so."""
    slicer = pytest.importorskip("slicer")
    import logging

    from HermesSegmentLib.slicer.mrml_logic import volume_to_sitk

    scene = slicer.vtkMRMLScene()
    volume = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "tilted CT")
    slicer.util.updateVolumeFromArray(volume, body_ct(seed=24))
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "Acquisition transform")
    with caplog.at_level(logging.WARNING, logger="HermesSegmentLib"):
        volume_to_sitk(volume)
    assert caplog.text == ""
    volume.SetAndObserveTransformNodeID(grid.GetID())
    with caplog.at_level(logging.WARNING, logger="HermesSegmentLib"):
        volume_to_sitk(volume)
    assert "non-linear transform" in caplog.text and "harden" in caplog.text
