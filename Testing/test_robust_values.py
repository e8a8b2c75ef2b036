"""Issue 11, values and notices: CT that is not in Hounsfield units, what is skipped is said (CLI,
console API, panel channel), out-of-memory anywhere says so and what to do, import-upstream's
messages."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from generated_inputs import as_image, body_ct
from HermesSegmentLib.cli import main as cli_main
from HermesSegmentLib.errors import HermesError
from HermesSegmentLib.pipeline import segment_image


def run(image, model, **kwargs):
    options = dict(modality="CT", targets="all", model=model, device="cpu", precision="float32")
    options.update(kwargs)
    return segment_image(image, **options)


def one_line(error, *words):
    message = str(error.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message


# ------------------------------------------------------------------- 5: CT not in HU

def test_raw_scanner_values_are_converted_to_hu_with_a_warning(tiny_package):
    hu = np.maximum(body_ct(seed=7), -1024)  # scanners store air's noise from -1024 HU up
    raw = (hu.astype(np.int32) + 1024).astype(np.uint16)  # stored values, the rescale never applied
    reference = run(as_image(hu), tiny_package, keep_probabilities=True)
    result = run(as_image(raw), tiny_package, keep_probabilities=True)
    np.testing.assert_array_equal(result.probabilities, reference.probabilities)
    assert any("1024" in w and "converted" in w for w in result.warnings), result.warnings
    assert reference.warnings == []


@pytest.mark.parametrize("make", [
    lambda hu: (hu.astype(np.int32) + 1024).astype(np.int16),                # signed: air's noise dips below 0
    lambda hu: (hu.astype(np.int32) + 1024).astype(np.float32),              # the same, as floats
    lambda hu: np.where(np.arange(48) < 4, -2000, hu.astype(np.int32) + 1024).astype(np.int16),  # padded, -2000
])
def test_other_stored_scanner_values_are_converted_too(make):
    from HermesSegmentLib.preprocess import to_hounsfield

    hu = body_ct(seed=7)
    converted = sitk.GetArrayFromImage(to_hounsfield(as_image(make(hu))))
    inside = make(hu) > -2000
    np.testing.assert_array_equal(converted[inside], hu[inside])


def test_a_standardised_ct_is_refused():
    from HermesSegmentLib.preprocess import to_hounsfield

    hu = body_ct().astype(np.float32)
    with pytest.raises(HermesError) as error:
        to_hounsfield(as_image((hu - hu.mean()) / hu.std()))
    one_line(error, "normalised", "Hounsfield")


def test_a_ct_scaled_far_beyond_hounsfield_units_is_refused():
    # Before: a CT multiplied by 1e30 (a broken scale factor) was accepted without a word.
    from HermesSegmentLib.preprocess import to_hounsfield

    with pytest.raises(HermesError) as error:
        to_hounsfield(as_image(body_ct().astype(np.float32) * np.float32(1e30)))
    one_line(error, "far beyond any Hounsfield unit")
    to_hounsfield(as_image(np.where(body_ct() > 500, 28000, body_ct()).astype(np.int16)))  # metal: still HU


@pytest.mark.parametrize("array,words", [
    (np.clip((body_ct() + 160) * 255 / 400, 0, 255).astype(np.uint8), ("8-bit", "Hounsfield")),
    (np.clip(body_ct() // 16, -128, 127).astype(np.int8), ("8-bit", "Hounsfield")),
    ((body_ct().astype(np.float32) + 1024) / 4096, ("normalised", "Hounsfield")),
])
def test_ct_whose_units_cannot_be_recovered_is_refused_with_advice(tiny_package, array, words):
    with pytest.raises(HermesError) as error:
        run(as_image(array), tiny_package)
    one_line(error, *words)


def test_ct_without_air_is_segmented_with_a_warning(tiny_package):
    tissue = np.clip(body_ct(seed=8), -150, 400).astype(np.int16)  # a crop inside the body
    result = run(as_image(tissue), tiny_package)
    assert any("air" in w for w in result.warnings), result.warnings


def test_the_cli_shows_the_warning_and_progress_json_carries_it(tmp_path, tiny_package, capsys):
    raw = (np.maximum(body_ct(seed=7), -1024).astype(np.int32) + 1024).astype(np.uint16)
    sitk.WriteImage(as_image(raw), str(tmp_path / "raw.nrrd"))
    base = ["segment", str(tmp_path / "raw.nrrd"), "--modality", "CT", "--model", str(tiny_package), "--device", "cpu"]
    assert cli_main([*base, "--out", str(tmp_path / "a")]) == 0
    err = capsys.readouterr().err
    assert any(line.startswith("warning: raw:") and "1024" in line for line in err.splitlines()), err
    assert cli_main([*base, "--out", str(tmp_path / "b"), "--progress-json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert any(e.get("case") == "raw" and "1024" in e.get("warning", "") for e in events), events


@pytest.mark.slow
def test_the_panel_receives_warnings_through_the_background_run(tmp_path, tiny_package):
    from HermesSegmentLib.slicer.background import LogLine, start_segmentation

    raw = (np.maximum(body_ct(seed=7), -1024).astype(np.int32) + 1024).astype(np.uint16)
    from HermesSegmentLib.pipeline.options import SegmentOptions

    run_, _ = start_segmentation(as_image(raw), tmp_path / "run", modality="CT", targets=["liver"],
                                 options=SegmentOptions(model=str(tiny_package), device="cpu"))
    assert run_.wait(timeout=300) == 0, run_.stderr_lines
    events = run_.poll()
    notices = [e.text for e in events if isinstance(e, LogLine) and e.stream == "warning"]
    assert any("1024" in text for text in notices), events


# ------------------------------------------------------------ 10: what is skipped is said

def right_half_of_the_trunk() -> sitk.Image:
    """A scan that covers only the patient's right half: the trunk is cut by the field of view."""
    array = body_ct(shape_zyx=(24, 40, 48), seed=9)
    return as_image(np.ascontiguousarray(array[:, :, :26]))  # x runs toward the patient's left


def test_a_skipped_side_rule_is_reported(tiny_package, tmp_path, capsys):
    result = run(right_half_of_the_trunk(), tiny_package, targets=["liver", "kidney_left"])
    side = [w for w in result.warnings if "kidney_left" in w or "Left kidney" in w]
    assert side and "side" in side[0], result.warnings
    assert not any("liver" in w for w in result.warnings), result.warnings  # liver has no side
    sitk.WriteImage(right_half_of_the_trunk(), str(tmp_path / "half.nii.gz"))
    assert cli_main(["segment", str(tmp_path / "half.nii.gz"), "--modality", "CT", "--targets", "kidney_left",
                     "--model", str(tiny_package), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert any(line.startswith("warning: half:") and "side" in line for line in err.splitlines()), err


def test_an_empty_result_from_a_tiny_field_of_view_is_reported(tiny_package):
    tiny = as_image(body_ct(shape_zyx=(6, 8, 8), seed=10), spacing_xyz=(2.0, 2.0, 2.0))
    result = run(tiny, tiny_package, threshold=1.0)
    assert all(m.voxels == 0 for m in result.masks)
    assert any("field of view" in w for w in result.warnings), result.warnings
    normal = run(as_image(body_ct(seed=10)), tiny_package, threshold=1.0)
    assert not any("field of view" in w for w in normal.warnings), normal.warnings


# -------------------------------------------------------------------- 8: out of memory

@pytest.fixture
def scan(tmp_path):
    sitk.WriteImage(as_image(body_ct(seed=11)), str(tmp_path / "ct.nii.gz"))
    return tmp_path / "ct.nii.gz"


def _raiser(error):
    def fail(*args, **kwargs):
        raise error
    return fail


def _numpy_memory_error(shape, dtype) -> MemoryError:
    """The MemoryError numpy raises ("Unable to allocate 600. MiB for an array with shape ...")."""
    # a private class, absent from numpy's stubs
    array_memory_error = np._core._exceptions._ArrayMemoryError  # type: ignore[attr-defined]
    return array_memory_error(shape, np.dtype(dtype))


def _memory_cases():
    import torch

    return [
        ("resampling", lambda m: m.setattr(sitk, "Resample", _raiser(RuntimeError(
            "Exception thrown in SimpleITK Resample: itkImportImageContainer.hxx:182:\n"
            "Failed to allocate memory for image."))), None),
        ("network", lambda m: m.setattr(torch.nn.functional, "conv3d", _raiser(RuntimeError(
            "could not create a primitive"))), None),
        ("network", lambda m: m.setattr(torch.nn.functional, "conv3d", _raiser(RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
            "allocate 2147483648 bytes. Error code 12 (Cannot allocate memory)"))), "2.0 GiB"),
        ("writing", lambda m: m.setattr(sitk, "WriteImage", _raiser(_numpy_memory_error((300, 512, 512), np.float64))),
         "600 MiB"),
    ]


@pytest.mark.parametrize("case", range(4))
def test_out_of_memory_anywhere_says_so_and_what_to_do(scan, tmp_path, tiny_package, monkeypatch, capsys, case):
    stage, patch, size = _memory_cases()[case]
    patch(monkeypatch)
    status = cli_main(["segment", str(scan), "--modality", "CT", "--model", str(tiny_package), "--device", "cpu",
                       "--out", str(tmp_path / "out"), "--format", "nifti"])
    monkeypatch.undo()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error: ct:")]
    assert status == 1 and len(lines) == 1, err
    assert "out of memory" in lines[0] and stage in lines[0] and "--batch-size" in lines[0], lines[0]
    assert "please report" not in lines[0] and "primitive" not in lines[0], lines[0]
    if size:
        assert size in lines[0], lines[0]


def test_out_of_memory_in_the_console_api_is_a_hermes_error(tiny_package, monkeypatch):
    import torch

    monkeypatch.setattr(torch.nn.functional, "conv3d", _raiser(RuntimeError("could not create a primitive")))
    with pytest.raises(HermesError) as error:
        run(as_image(body_ct(seed=12)), tiny_package)
    one_line(error, "out of memory")


# ----------------------------------------------------------------- 12: import-upstream

@pytest.mark.parametrize("make,words", [
    (lambda p: p.write_text("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>"), ("HTML",)),
    (lambda p: p.mkdir(), ("folder",)),
    (lambda p: p.write_bytes(b"PK\x03\x04" + bytes(200)), ("incomplete",)),
    (lambda p: p.write_bytes(bytes(range(256)) * 8), ("not a PyTorch checkpoint",)),
])
def test_import_upstream_explains_a_bad_checkpoint_in_one_line(tmp_path, capsys, make, words):
    path = tmp_path / "hermes_r.pth"
    make(path)
    status = cli_main(["models", "import-upstream", str(path), "--out", str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1, err
    for word in words:
        assert word in err, err
    assert "KeyError" not in err and "IndexError" not in err and not (tmp_path / "out.safetensors").exists()


def test_import_upstream_keeps_torch_warnings_out_of_the_message(tmp_path, capsys, monkeypatch):
    import torch

    path = tmp_path / "hermes_r.pth"
    torch.save({"model_state_dict": {"unrelated.weight": torch.zeros(2)}}, str(path))
    real_load = torch.load

    def noisy_load(*args, **kwargs):
        warnings.warn("TypedStorage is deprecated. It will be removed in the future", UserWarning, stacklevel=2)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", noisy_load)
    with warnings.catch_warnings(record=True) as escaped:  # what would reach the user's terminal
        warnings.simplefilter("always")
        status = cli_main(["models", "import-upstream", str(path), "--out", str(tmp_path / "out.safetensors")])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1 and "TypedStorage" not in err, err
    assert [str(w.message) for w in escaped] == []
