"""The panel's decisions without Qt (HermesSegmentLib.slicer.panel) and the engine contracts it relies on,
against slicer-core: the progress contract through the real CLI, modality guess, reference geometry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from HermesSegmentLib.slicer import background as process

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_progress_contract_through_the_cli(tmp_path):
    """The CLI reports each stage's own fraction; ProgressEvent.overall never goes back and ends at 1."""
    sitk = pytest.importorskip("SimpleITK")
    array = np.full((24, 40, 40), -1000, np.int16)
    array[4:-4, 8:-8, 8:-8] = 40
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((4.0, 4.0, 4.0))
    from HermesSegmentLib.pipeline.options import SegmentOptions

    run, _result = process.start_segmentation(image, tmp_path, modality="CT", targets=["liver"],
                                              options=SegmentOptions(model="hermes-demo", device="cpu"))
    assert run.wait(600) == 0, run.stderr_lines[-5:]
    events = [e for e in run.poll() if isinstance(e, process.ProgressEvent)]
    stages = [e.stage for e in events]
    assert {"preprocess", "inference", "postprocess"} <= set(stages)
    overall = [e.overall for e in events]
    assert overall == sorted(overall) and overall[-1] == 1.0
    assert any(e.fraction == 0.0 for e in events if e.stage == "inference"), "stage fractions restart per stage"
    assert process.overall_fraction("inference", 0.5) > process.overall_fraction("preprocess", 1.0)


def test_auto_device_never_picks_apple_mps(monkeypatch):
    torch = pytest.importorskip("torch")
    from HermesSegmentLib.inference import select_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert select_device("auto").type == "cpu"


def test_modality_guess_looks_at_the_whole_volume():
    from HermesSegmentLib.read import guess_modality

    ct = np.full((20, 512, 512), -1000, np.int16)  # a CT whose first slice is all air
    ct[1:, 100:400, 100:400] = 40
    assert guess_modality(ct) == "CT"


@pytest.mark.slicer
def test_existing_segmentation_keeps_its_reference_geometry():
    slicer = pytest.importorskip("slicer")
    import vtk
    from HermesSegmentLib.mask import TargetMask
    from HermesSegmentLib.slicer.mrml_logic import MRMLLogic as HermesSegmentLogic

    scene = slicer.vtkMRMLScene()

    def volume(name, size):
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        image = vtk.vtkImageData()
        image.SetDimensions(*size)
        image.AllocateScalars(vtk.VTK_SHORT, 1)
        node.SetAndObserveImageData(image)
        return node

    fine, coarse = volume("fine", (20, 20, 10)), volume("coarse", (10, 10, 5))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "mine")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(fine)
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    before = segmentation.GetSegmentation().GetConversionParameter(name)
    mask = TargetMask("liver", "Liver", (221, 130, 101), "~SCT^0^liver", (0, 0, 0), np.ones((2, 2, 2), bool))
    HermesSegmentLogic().import_result([mask], coarse, segmentation)
    assert segmentation.GetSegmentation().GetConversionParameter(name) == before
    fresh = HermesSegmentLogic().import_result([mask], coarse, None)
    assert fresh.GetSegmentation().GetConversionParameter(name), "a new segmentation takes the input's geometry"


def test_window_count_matches_the_sliding_window():
    from HermesSegmentLib.inference.windows import window_starts
    from HermesSegmentLib.slicer import estimate

    manifest = {"input": {"spacing_zyx_mm": [1.5, 1.5, 1.5], "window_size_zyx": [128, 128, 128]}}
    for shape, spacing, overlap in [((300, 512, 512), (1.0, 0.8, 0.8), 0.5), ((40, 256, 256), (3.0, 1.2, 1.2), 0.25),
                                    ((60, 60, 60), (1.0, 1.0, 1.0), 0.5)]:
        model_shape = [max(1, round(n * s / 1.5)) for n, s in zip(shape, spacing)]
        padded = [max(n, 128) for n in model_shape]
        assert estimate.window_count(shape, spacing, manifest, overlap) == len(window_starts(padded, [128] * 3, overlap))


def test_question_only_for_long_runs():
    from HermesSegmentLib.slicer import estimate

    assert estimate.question(10, 1.0) is None
    text = estimate.question(112, 8.7)
    assert "about 16 minutes" in text and "112 windows of 8.7 s" in text
    assert estimate.is_slow({"architecture": {"base_channels": 32}}, "cpu")
    assert not estimate.is_slow({"architecture": {"base_channels": 32}}, "cuda")
    assert not estimate.is_slow({"architecture": {"base_channels": 8}}, "auto")
