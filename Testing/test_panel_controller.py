"""The panel's decisions without Qt (HermesSegmentLib.slicer.panel) and the engine contracts it relies on,
against slicer-core: the progress contract through the real CLI, modality guess, reference geometry."""

from __future__ import annotations

import dataclasses
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


class Everywhere:
    """A predictor that finds a target in every voxel (logit +10) or, with ``sign=-1``, nowhere."""

    def __init__(self, sign=1.0):
        self.sign = sign

    def __call__(self, windows):
        return 0.0 * windows + 10.0 * self.sign

    def to(self, device):
        return self


@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, -1, 0, 0, 0, 1),
                                       (0.8, 0.6, 0, -0.6, 0.8, 0, 0, 0, 1)])
def test_window_count_is_what_the_sliding_window_runs(direction):
    """From the header alone: the model-space grid the preprocessing makes, the coverage windows when
    nothing is near (the fewest) and the whole lattice when targets are everywhere (the most)."""
    sitk = pytest.importorskip("SimpleITK")
    from HermesSegmentLib.inference import WindowPlan, predict_volume
    from HermesSegmentLib.pipeline.options import SegmentOptions
    from HermesSegmentLib.preprocess import to_model_space
    from HermesSegmentLib.slicer import estimate

    image = sitk.Image([70, 50, 30], sitk.sitkInt16)
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetDirection(direction)
    image.SetOrigin((12.0, -40.0, 3.0))
    manifest = {"input": {"spacing_zyx_mm": [2.0, 2.0, 2.0], "window_size_zyx": [16, 16, 16]}}
    matrix = np.asarray(direction, float).reshape(3, 3) * np.asarray(image.GetSpacing())
    grid = estimate.model_grid_zyx(image.GetSize(), np.column_stack([matrix, image.GetOrigin()]), manifest)
    model_space = to_model_space(image, spacing_zyx=[2.0] * 3, modality="CT", crop_to_body=False,
                                 normalization={"method": "clip_zscore", "clip": [-1000, 1000]})
    assert grid == model_space.grid_size_zyx
    for options in (SegmentOptions(), SegmentOptions(fast=True)):
        count = estimate.window_count(grid, manifest, options)
        ran = []
        for sign in (-1.0, 1.0):
            plan = WindowPlan(near_targets=0.125)
            predict_volume(Everywhere(sign), model_space.array, window_zyx=(16, 16, 16), overlap=options.window_overlap,
                           plan=plan)
            ran.append(plan.windows)
        assert (count.fewest, count.most) == tuple(ran) and count.fewest < count.most
        assert estimate.window_count(grid, manifest, dataclasses.replace(options, target_windows=False)) == \
            estimate.WindowCount(count.most, count.most)


def test_question_only_for_long_runs():
    from HermesSegmentLib.slicer import estimate

    assert estimate.question(estimate.Estimate(estimate.WindowCount(10, 10), 1.0)) is None
    text = estimate.question(estimate.Estimate(estimate.WindowCount(112, 112), 8.7))
    assert text is not None, "a long run asks"
    assert "about 16 minutes (112 windows of 8.7 s each" in text and "GPU" in text
    text = estimate.question(estimate.Estimate(estimate.WindowCount(36, 112), 8.7))
    assert text is not None, "a run that may be long asks"
    assert "about 5-16 minutes (36 to 112 windows of 8.7 s each" in text and "smaller the asked targets" in text
    assert estimate.question(estimate.Estimate(estimate.WindowCount(4, 20), 7.0)) is not None, "the most decides"
    assert estimate.is_slow({"architecture": {"base_channels": 32}}, "cpu")
    assert not estimate.is_slow({"architecture": {"base_channels": 32}}, "cuda")
    assert not estimate.is_slow({"architecture": {"base_channels": 8}}, "auto")


def test_per_window_time_is_measured_for_the_runs_options_and_cached(capsys):
    """The background command carries the run's options; each option that changes a window's time
    has its own cached measurement."""
    from HermesSegmentLib.pipeline.options import SegmentOptions
    from HermesSegmentLib.slicer import estimate

    options = SegmentOptions(model="hermes-demo", device="cpu", backend="torch", precision="float32")
    command = estimate.measure_command(options, "CT", python="python")
    assert command[:3] == ["python", "-m", "HermesSegmentLib.slicer.estimate"]
    assert estimate.cached_window_seconds(options) is None
    assert estimate.main(command[3:]) == 0
    seconds = json.loads(capsys.readouterr().out)["window_seconds"]
    assert seconds > 0 and estimate.cached_window_seconds(options) == seconds
    assert estimate.cached_window_seconds(dataclasses.replace(options, precision="bfloat16")) is None
    assert estimate.main(["--modality", "CT", "--model", "no-such-model"]) == 1
    assert "error:" in capsys.readouterr().err


def test_the_panel_fills_every_segment_option():
    """Each SegmentOptions field is set by a parameter-node field or by a named list, or is said not offered:
    a field added to SegmentOptions fails here until the panel offers it."""
    from HermesSegmentLib.pipeline.options import SegmentOptions
    from HermesSegmentLib.slicer import panel

    fields = [f.name for f in dataclasses.fields(SegmentOptions) if f.name != "postprocess"]
    fields += [f"postprocess.{f.name}" for f in dataclasses.fields(SegmentOptions().postprocess)]
    filled = list(panel.PARAMETER_OPTIONS.values()) + list(panel.OTHER_OPTIONS)
    assert sorted(filled) == sorted(fields)


def test_backends_and_precisions_offered_are_the_engines(monkeypatch):
    import importlib.util

    from HermesSegmentLib.inference import PRECISION_CHOICES
    from HermesSegmentLib.pipeline.options import SegmentOptions
    from HermesSegmentLib.slicer import panel

    assert tuple(panel.PRECISIONS.values()) == tuple(PRECISION_CHOICES)
    choices = next(f for f in dataclasses.fields(SegmentOptions) if f.name == "backend").metadata["choices"]
    real_find_spec = importlib.util.find_spec
    for installed in (True, False):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a, installed=installed: (real_find_spec("json") if installed else None)
                            if name == "openvino" else real_find_spec(name, *a))
        offered = [value for _label, value in panel.backend_entries()]
        assert set(offered) <= set(choices) and ("openvino" in offered) == installed


def test_a_server_runs_stages_move_the_bar_forward_only():
    """A server run also reports its queue, the upload's reading and the result's writing: the bar
    stays at 0 while queued and never goes back."""
    stages = [("queued", 0.0), ("reading", 0.0), ("preprocess", 0.5), ("preprocess", 1.0), ("inference", 0.0),
              ("inference", 0.7), ("postprocess", 1.0), ("writing", 0.0), ("writing", 1.0)]
    overall = [process.overall_fraction(stage, fraction) for stage, fraction in stages]
    assert overall[:2] == [0.0, 0.0] and overall == sorted(overall) and overall[-1] == 1.0


def test_the_panel_keeps_one_client_id_and_always_opens(monkeypatch):
    """The ID the panel sends to servers: the remembered one, else the installation's (which the console
    API sends too); a malformed $HERMES_SEGMENT_CLIENT_ID never stops the panel from opening."""
    from HermesSegmentLib.server.client import installation_client_id
    from HermesSegmentLib.server.protocol import is_client_id
    from HermesSegmentLib.slicer.panel import panel_client_id

    assert panel_client_id("remembered-0001") == "remembered-0001"
    assert panel_client_id(None) == panel_client_id("") == panel_client_id("bad id") == installation_client_id()
    monkeypatch.setenv("HERMES_SEGMENT_CLIENT_ID", "not/an/id")
    assert is_client_id(panel_client_id(None)) and panel_client_id("remembered-0001") == "remembered-0001"
