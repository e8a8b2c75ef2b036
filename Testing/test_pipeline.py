"""segment_image and the `segment` / `targets` CLI, end to end with a tiny random-weight model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from HermesSegmentLib.cli import main as cli_main
from HermesSegmentLib.errors import CancelledError, HermesError
from HermesSegmentLib.inference import CancelToken
from HermesSegmentLib.pipeline import segment_image


def ct_like(shape_xyz=(40, 36, 30), spacing=(3.0, 3.0, 4.0), direction=None, seed=0) -> sitk.Image:
    """An ellipse of soft tissue in air with a brighter blob, int16 HU."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape_xyz[2], : shape_xyz[1], : shape_xyz[0]]
    body = ((x - shape_xyz[0] / 2) / (shape_xyz[0] / 2.5)) ** 2 + ((y - shape_xyz[1] / 2) / (shape_xyz[1] / 3)) ** 2 < 1
    array = np.where(body, 40, -1000) + rng.normal(0, 10, body.shape)
    array[(x - 18) ** 2 + (y - 18) ** 2 + (z - 15) ** 2 < 30] = 200
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin((-60.0, 20.0, 100.0))
    if direction is not None:
        image.SetDirection(direction)
    return image


def test_segment_image_returns_masks_on_the_input_grid(tiny_package):
    oblique = tuple(sitk.VersorTransform((0.2, 0.1, 1.0), 0.3).GetMatrix())
    image = ct_like(direction=oblique)
    stages = []
    result = segment_image(image, modality="ct", targets="all", model=tiny_package, device="cpu",
                           progress=lambda stage, fraction, message: stages.append(stage))
    assert [m.key for m in result.masks] == ["liver", "spleen", "kidney_left"]
    assert result.reference.GetSize() == image.GetSize() and result.reference.GetDirection() == oblique
    for mask in result.masks:
        assert mask.name and mask.terminology.count("~") == 6 and len(mask.color) == 3
        assert all(o + s <= n for o, s, n in zip(mask.offset_zyx, mask.array.shape, image.GetSize()[::-1]))
    assert {"preprocess", "inference", "postprocess"} <= set(stages)
    assert result.seconds["total"] >= result.seconds["inference"] > 0


def test_probabilities_are_kept_on_request(tiny_package):
    result = segment_image(ct_like(), modality="CT", targets=["spleen"], model=tiny_package, device="cpu",
                           keep_probabilities=True, precision="float32")
    assert result.precision == "float32"
    (key, probabilities), = list(result.probability_maps())
    assert key == "spleen" and probabilities.dtype == np.uint8 and probabilities.shape == ct_like().GetSize()[::-1]


@pytest.mark.parametrize("direction", [None, (-1, 0, 0, 0, -1, 0, 0, 0, 1)])
def test_a_left_organ_is_kept_on_the_left_of_the_body(tiny_package, monkeypatch, direction):
    """A model that finds the organ on both sides (every probability 1) gives only the left one."""
    import HermesSegmentLib.pipeline.segment as pipeline
    from HermesSegmentLib.postprocess import PostprocessOptions

    monkeypatch.setattr(pipeline, "predict_volume", lambda predictor, volume, **kwargs:
                        np.full((len(predictor.task_indices), *volume.shape), 255, np.uint8))
    image = ct_like(shape_xyz=(80, 36, 30), direction=direction)  # air on both sides of the body
    x_mm = np.array([image.TransformIndexToPhysicalPoint((i, 0, 0))[0] for i in range(image.GetWidth())])
    midline_mm = image.TransformContinuousIndexToPhysicalPoint((40.0, 18.0, 15.0))[0]  # the body's centre

    def x_extent(mask):  # LPS x (towards the patient's left) of the mask's voxels, mm
        columns = np.flatnonzero(mask.full(image.GetSize()[::-1]).any(axis=(0, 1)))
        return x_mm[columns].min(), x_mm[columns].max()

    kept = segment_image(image, modality="CT", targets=["liver", "kidney_left"], model=tiny_package, device="cpu")
    everywhere = segment_image(image, modality="CT", targets=["liver", "kidney_left"], model=tiny_package,
                               device="cpu", postprocess=PostprocessOptions(side_constraint=False))
    assert x_extent(kept.masks[0]) == x_extent(everywhere.masks[0])  # the liver has no side
    low, high = x_extent(kept.masks[1])
    assert midline_mm - 15 - 4 <= low <= midline_mm - 15 + 4 and high > midline_mm + 30  # 15 mm across, 4 mm voxels
    assert x_extent(everywhere.masks[1])[0] < midline_mm - 30


@pytest.mark.parametrize("kwargs,message", [
    (dict(modality="ultrasound", targets="all"), "unknown modality"),
    (dict(modality="PET", targets="all"), "does not handle modality PET"),
    (dict(modality="CT", targets="livr"), "did you mean: liver"),
    (dict(modality="CT", targets="heart"), "has no target 'heart'"),
    (dict(modality="CT", targets=""), "no targets given"),
    (dict(modality="CT", targets="all", precision="fp8"), "unknown precision 'fp8'"),
])
def test_request_mistakes_are_one_line_errors(tiny_package, kwargs, message):
    with pytest.raises(HermesError) as error:
        segment_image(ct_like(), model=tiny_package, device="cpu", **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def _with_nan() -> sitk.Image:
    image = sitk.Cast(ct_like(), sitk.sitkFloat32)
    image[3, 4, 5] = float("nan")
    return image


def _spaced(spacing) -> sitk.Image:
    image = ct_like()
    image.SetSpacing(spacing)
    return image


@pytest.mark.parametrize("make_image, options, message", [
    (lambda: ct_like()[:, :, 0], {}, "2D image"),
    (lambda: sitk.JoinSeries([ct_like(), ct_like()]), {}, "4D image"),
    (lambda: sitk.Compose([ct_like()] * 3), {}, "RGB/vector"),
    (_with_nan, {}, "NaN values"),
    (lambda: sitk.GetArrayFromImage(ct_like()), {}, "not a SimpleITK image"),
    (lambda: "ct.nii.gz", {}, "not a SimpleITK image"),
    # a header in micrometres, or broken: before, hours of resampling or "unexpected ValueError"
    (lambda: _spaced((3000.0, 3.0, 4.0)), {}, "no scan is"),
    (lambda: _spaced((1e-30, 3.0, 4.0)), {}, "no scan is"),
    (ct_like, {"min_island_ml": -3.0}, "--min-island-ml"),
    (ct_like, {"blending": "max"}, "unknown --blending"),
    (ct_like, {"backend": "tensorrt"}, "unknown --backend"),
])
def test_images_and_options_the_model_cannot_use_are_one_line_errors_in_the_console_api(
        tiny_package, make_image, options, message):
    from HermesSegmentLib.pipeline import SegmentOptions
    from HermesSegmentLib.postprocess import PostprocessOptions

    island = options.pop("min_island_ml", None)
    segment_options = SegmentOptions(model=tiny_package, device="cpu",
                                     postprocess=PostprocessOptions(min_island_ml=island), **options)
    with pytest.raises(HermesError) as error:
        segment_image(make_image(), modality="CT", targets="all", options=segment_options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_cancel_raises_before_anything_is_returned(tiny_package):
    token = CancelToken()
    token.cancel()
    with pytest.raises(CancelledError):
        segment_image(ct_like(), modality="CT", targets="all", model=tiny_package, device="cpu", cancel=token)


# ---------------------------------------------------------------------------------------- CLI

@pytest.fixture
def cases(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    sitk.WriteImage(ct_like(seed=1), str(folder / "a.nii.gz"))
    sitk.WriteImage(ct_like(seed=2, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1)), str(folder / "b.nrrd"))
    (folder / "broken.nii.gz").write_bytes(b"not an image at all")
    return folder


def test_batch_with_a_corrupt_file_finishes_the_others(cases, tmp_path, tiny_package, capsys):
    import slicerio

    out = tmp_path / "out"
    status = cli_main(["segment", str(cases), "--modality", "CT", "--targets", "liver,spleen",
                       "--model", str(tiny_package), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1
    assert "error: broken:" in err and "1 of 3 case(s) failed" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.hermes-segment.json", "a.seg.nrrd", "b.hermes-segment.json",
                                                     "b.seg.nrrd", "summary.csv"]
    segmentation = slicerio.read_segmentation(str(out / "a.seg.nrrd"))
    names = [s["name"] for s in segmentation["segments"]]
    assert names == ["Liver", "Spleen"]
    liver = segmentation["segments"][0]
    assert "10200004" in json.dumps(liver["terminology"])
    rows = (out / "summary.csv").read_text().splitlines()
    assert rows[0] == "case,target,voxels,volume_ml,seconds" and len(rows) == 5

    # Done cases are skipped, --overwrite redoes them.
    before = (out / "a.seg.nrrd").stat().st_mtime_ns
    assert cli_main(["segment", str(cases / "a.nii.gz"), "--modality", "CT", "--targets", "liver",
                     "--model", str(tiny_package), "--out", str(out)]) == 0
    assert (out / "a.seg.nrrd").stat().st_mtime_ns == before
    assert "skipped" in capsys.readouterr().err
    assert cli_main(["segment", str(cases / "a.nii.gz"), "--modality", "CT", "--targets", "liver",
                     "--model", str(tiny_package), "--out", str(out), "--overwrite"]) == 0
    assert (out / "a.seg.nrrd").stat().st_mtime_ns != before


def test_progress_json_lines_nifti_output_and_precision(cases, tmp_path, tiny_package, capsys):
    out = tmp_path / "out"
    assert cli_main(["segment", str(cases / "a.nii.gz"), "--modality", "CT", "--model", str(tiny_package),
                     "--out", str(out), "--format", "nifti", "--progress-json", "--fast", "--keep-largest",
                     "--precision", "float32"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "on CPU (float32)" in events[0]["message"]
    fractions = [e["fraction"] for e in events if e.get("stage") == "inference"]
    assert fractions and fractions[-1] == 1.0
    assert (out / "a.nii.gz").is_file() and (out / "a.json").is_file()


@pytest.mark.parametrize("writer,message", [
    (lambda p: sitk.WriteImage(sitk.Image(20, 20, sitk.sitkInt16), str(p)), "2D"),
    (lambda p: sitk.WriteImage(sitk.Image([8, 8, 8, 3], sitk.sitkFloat32), str(p)), "--frame"),
    (lambda p: sitk.WriteImage(sitk.GetImageFromArray(np.full((8, 8, 8), np.nan, np.float32)), str(p)), "NaN"),
])
def test_bad_images_get_one_line_errors_and_nonzero_status(tmp_path, tiny_package, capsys, writer, message):
    path = tmp_path / "bad.nrrd"
    writer(path)
    status = cli_main(["segment", str(path), "--modality", "CT", "--model", str(tiny_package),
                       "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status != 0 and message in err
    problem = [line for line in err.splitlines() if message in line]
    assert len(problem) == 1 and problem[0].startswith("error: bad: ")
    assert not list((tmp_path / "o").glob("*.seg.nrrd"))


@pytest.mark.parametrize("extra,message", [
    (["--modality", "XR"], "unknown modality"),
    (["--modality", "CT", "--targets", "livr"], "did you mean"),
    (["--modality", "CT", "--model", "nosuchmodel"], "unknown model"),
    (["--modality", "CT", "--overlap", "1.5"], "--overlap"),
])
def test_request_mistakes_fail_fast_with_status_2(cases, tmp_path, tiny_package, capsys, extra, message):
    args = ["segment", str(cases / "a.nii.gz"), "--model", str(tiny_package), "--out", str(tmp_path / "o"), *extra]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_interrupt_leaves_no_output(cases, tmp_path, tiny_package, monkeypatch, capsys):
    from HermesSegmentLib.inference import sliding_window

    calls = {"n": 0}
    real_windows = sliding_window._windows

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_windows(*args, **kwargs)

    monkeypatch.setattr(sliding_window, "_windows", interrupted)
    big = tmp_path / "big.nii.gz"
    sitk.WriteImage(ct_like(shape_xyz=(60, 60, 40)), str(big))
    out = tmp_path / "out"
    status = cli_main(["segment", str(big), "--modality", "CT", "--model", str(tiny_package),
                       "--out", str(out), "--batch-size", "1", "--no-body-crop"])
    assert calls["n"] == 2
    assert status == 130
    assert list(out.iterdir()) == []


def test_targets_command_lists_per_modality(tiny_package, capsys):
    assert cli_main(["targets", "--model", str(tiny_package), "--modality", "MR"]) == 0
    out = capsys.readouterr().out
    assert "MR (1 targets)" in out and "liver" in out and "spleen" not in out


def test_a_one_piece_organ_keeps_its_largest_part(tiny_package, monkeypatch):
    """A model that finds a big and a small blob: the liver (one piece) keeps the big one, unless asked not to."""
    import HermesSegmentLib.pipeline.segment as pipeline
    from HermesSegmentLib.postprocess import PostprocessOptions

    def two_blobs(predictor, volume, **kwargs):
        probabilities = np.zeros((len(predictor.task_indices), *volume.shape), np.uint8)
        probabilities[:, 2:8, 2:8, 2:8] = 255
        probabilities[:, 2:4, 2:4, -4:-2] = 255
        return probabilities

    monkeypatch.setattr(pipeline, "predict_volume", two_blobs)
    request = dict(modality="CT", targets=["liver"], model=tiny_package, device="cpu")
    one = segment_image(ct_like(), **request).masks[0].array
    both = segment_image(ct_like(), postprocess=PostprocessOptions(single_piece=False), **request).masks[0].array
    labels, count = ndimage.label(one, structure=np.ones((3, 3, 3)))
    assert count == 1 and ndimage.label(both, structure=np.ones((3, 3, 3)))[1] == 2
    assert one.sum() < both.sum() and not (one & ~both).any()


def test_the_result_tells_the_device_the_run_finished_on(tiny_package, monkeypatch):
    """An accelerator that runs out of memory even with one window: the run moves to the CPU, gives
    the CPU's masks, and the result says where it finished."""
    import torch

    import HermesSegmentLib.pipeline.segment as pipeline
    from HermesSegmentLib.network import HermesPredictor

    request = dict(modality="CT", targets=["liver", "spleen"], model=tiny_package, precision="float32")
    on_cpu = segment_image(ct_like(), device="cpu", **request)
    real_to, real_call = HermesPredictor.to, HermesPredictor.__call__

    def to(self, device):  # the "meta" device stands for a GPU; the weights stay where they are
        if torch.device(device).type == "meta":
            self.device = torch.device("meta")
            return self
        return real_to(self, device)

    def call(self, windows):
        if self.device.type == "meta":
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_call(self, windows)

    monkeypatch.setattr(pipeline, "select_device", lambda requested: torch.device("meta"))
    monkeypatch.setattr(HermesPredictor, "to", to)
    monkeypatch.setattr(HermesPredictor, "__call__", call)
    fell_back = segment_image(ct_like(), **request)
    assert (fell_back.device, fell_back.precision) == ("cpu", "float32")
    assert [m.key for m in fell_back.masks] == [m.key for m in on_cpu.masks]
    for a, b in zip(fell_back.masks, on_cpu.masks):
        assert a.offset_zyx == b.offset_zyx and np.array_equal(a.array, b.array)


def test_the_batch_size_comes_from_the_free_memory_unless_asked(tiny_package, monkeypatch):
    import HermesSegmentLib.pipeline.segment as pipeline

    batch_sizes = []
    predict_volume = pipeline.predict_volume

    def spy(*args, batch_size, **kwargs):
        batch_sizes.append(batch_size)
        return predict_volume(*args, batch_size=batch_size, **kwargs)

    monkeypatch.setattr(pipeline, "predict_volume", spy)
    request = dict(modality="CT", targets=["liver"], model=tiny_package, device="cpu")
    monkeypatch.setattr(pipeline, "available_memory_gb", lambda device: 1e-6)  # two windows do not fit
    segment_image(ct_like(), **request)
    monkeypatch.setattr(pipeline, "available_memory_gb", lambda device: 16.0)
    segment_image(ct_like(), **request)
    segment_image(ct_like(), batch_size=3, **request)
    assert batch_sizes == [1, 2, 3]
