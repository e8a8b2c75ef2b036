"""Issue 11, reading: irregular DICOM geometry, damaged files, NaN/Inf, several series, memory,
single DICOM files and header/data pairs. Inputs are generated here (Testing/generated_inputs.py)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk

from generated_inputs import as_image, body_ct, tilted_orientation, tilted_positions, truncate, write_dicom_series
from HermesSegmentLib.errors import HermesError

pytest.importorskip("pydicom")

from HermesSegmentLib.read import read_image


def ramp(points: np.ndarray) -> np.ndarray:
    """HU as a linear function of the LPS position: linear interpolation reproduces it exactly."""
    return 2.0 * points[..., 1] + 3.0 * points[..., 2] - 300.0


def one_line(error: pytest.ExceptionInfo, *words: str) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


def voxel_points(image: sitk.Image) -> np.ndarray:
    """(z, y, x, 3) LPS positions of the voxel centres of ``image``."""
    size = image.GetSize()
    k, j, i = np.mgrid[: size[2], : size[1], : size[0]]
    index = np.stack([i, j, k], axis=-1).astype(float)
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    return index @ matrix.T + np.asarray(image.GetOrigin())


def assert_values_at_dicom_positions(image: sitk.Image, positions, orientation, pixel_spacing, rows, columns):
    """Every voxel of ``image`` that lies inside the acquired slices (one pixel in from their edges,
    between the first and the last slice) holds the value the scanner measured there (the ramp)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-6)  # a regular, orthonormal grid
    points = voxel_points(image)
    x_axis, y_axis = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    normal = np.cross(x_axis, y_axis)
    positions = np.asarray(positions, dtype=float)
    depth = positions @ normal
    order = np.argsort(depth)
    positions, depth = positions[order], depth[order]
    d = points @ normal
    inside = (d >= depth[0]) & (d <= depth[-1])
    # The slice plane through each point, interpolated between its two neighbours along the normal.
    k = np.clip(np.searchsorted(depth, d) - 1, 0, len(depth) - 2)
    w = np.clip((d - depth[k]) / (depth[k + 1] - depth[k]), 0, 1)[..., None]
    plane_origin = (1 - w) * positions[k] + w * positions[k + 1]
    column = (points - plane_origin) @ x_axis / pixel_spacing[1]
    row = (points - plane_origin) @ y_axis / pixel_spacing[0]
    inside &= (column >= 1) & (column <= columns - 2) & (row >= 1) & (row <= rows - 2)
    assert inside.mean() > 0.3, "the test must look at most of the volume"
    values = sitk.GetArrayViewFromImage(image).astype(float)
    error = np.abs(values - ramp(points))[inside]
    assert error.max() <= 1.5, f"max error {error.max():.1f} HU, {np.mean(error > 1.5):.0%} of the acquired voxels off"


# ----------------------------------------------------------------------- 2: irregular geometry

@pytest.mark.parametrize("tilt", [20.0, -12.0])
def test_gantry_tilt_is_resampled_to_the_dicom_positions(tmp_path, caplog, tilt):
    positions = tilted_positions(24, 5.0)
    orientation = tilted_orientation(tilt)
    write_dicom_series(tmp_path / "ct", ramp, positions=positions, orientation=orientation, matrix=(40, 48))
    with caplog.at_level(logging.WARNING, logger="HermesSegmentLib"):
        image = read_image(tmp_path / "ct")
    assert_values_at_dicom_positions(image, positions, orientation, (4.0, 4.0), 40, 48)
    assert "tilt" in caplog.text and "resampled" in caplog.text


def test_a_tilt_about_the_other_axis_is_resampled_too(tmp_path, caplog):
    t = np.deg2rad(15.0)
    orientation = (float(np.cos(t)), 0.0, float(-np.sin(t)), 0.0, 1.0, 0.0)  # planes tilted about the y axis
    positions = [(-94.0, -94.0, 5.0 * k) for k in range(16)]
    write_dicom_series(tmp_path / "ct", ramp, positions=positions, orientation=orientation)
    with caplog.at_level(logging.WARNING, logger="HermesSegmentLib"):
        image = read_image(tmp_path / "ct")
    assert_values_at_dicom_positions(image, positions, orientation, (4.0, 4.0), 40, 48)
    assert "tilt" in caplog.text and "resampled" in caplog.text


def test_slices_shifted_sideways_are_resampled(tmp_path, caplog):
    positions = [(-94.0 + 0.8 * k, -94.0, 4.0 * k) for k in range(16)]  # axial planes, stacked obliquely
    write_dicom_series(tmp_path / "ct", ramp, positions=positions)
    with caplog.at_level(logging.WARNING, logger="HermesSegmentLib"):
        image = read_image(tmp_path / "ct")
    assert_values_at_dicom_positions(image, positions, (1, 0, 0, 0, 1, 0), (4.0, 4.0), 40, 48)
    assert "resampled" in caplog.text


@pytest.mark.parametrize("z", [
    [0, 2.5, 5, 7.5, 10, 15, 17.5, 20, 22.5, 25, 30, 32.5, 35],          # missing slices
    [0, 2.5, 5, 7.5, 10, 12.5, 15, 20, 25, 30, 35, 40, 45],              # thin, then thick slices
    [0, 2.4, 5.1, 7.5, 9.9, 12.6, 15, 17.4, 20.1, 22.5],                 # jitter
])
def test_unequal_slice_spacing_is_resampled(tmp_path, caplog, z):
    positions = [(-94.0, -94.0, float(v)) for v in z]
    write_dicom_series(tmp_path / "ct", ramp, positions=positions)
    with caplog.at_level(logging.WARNING, logger="HermesSegmentLib"):
        image = read_image(tmp_path / "ct")
    assert_values_at_dicom_positions(image, positions, (1, 0, 0, 0, 1, 0), (4.0, 4.0), 40, 48)
    assert "not equally spaced" in caplog.text and "resampled" in caplog.text


def test_a_regular_series_is_read_as_is_without_a_warning(tmp_path, caplog):
    positions = [(-94.0, -94.0, 2.5 * k) for k in range(10)]
    write_dicom_series(tmp_path / "ct", ramp, positions=positions)
    with caplog.at_level(logging.WARNING, logger="HermesSegmentLib"):
        image = read_image(tmp_path / "ct")
    assert image.GetSize() == (48, 40, 10)
    assert_values_at_dicom_positions(image, positions, (1, 0, 0, 0, 1, 0), (4.0, 4.0), 40, 48)
    assert caplog.text == ""


def test_slices_of_different_orientations_are_refused(tmp_path):
    positions = [(-94.0, -94.0, 5.0 * k) for k in range(12)]
    orientations = [(1, 0, 0, 0, 1, 0)] * 6 + [tilted_orientation(15.0)] * 6
    write_dicom_series(tmp_path / "ct", ramp, positions=positions, orientation=orientations)
    with pytest.raises(HermesError) as error:
        read_image(tmp_path / "ct")
    one_line(error, "orientation")


def test_slices_of_different_pixel_spacings_are_refused(tmp_path):
    import pydicom

    write_dicom_series(tmp_path / "ct", ramp, positions=[(-94.0, -94.0, 5.0 * k) for k in range(12)])
    victim = sorted((tmp_path / "ct").iterdir())[3]
    dataset = pydicom.dcmread(victim)
    dataset.PixelSpacing = ["3.0", "3.0"]  # GDCM would stack it with the others' 4 mm
    dataset.save_as(victim)
    with pytest.raises(HermesError) as error:
        read_image(tmp_path / "ct")
    one_line(error, "pixel spacing")


@pytest.mark.parametrize("offset_mm", [0.0, 0.02, 0.4])  # 0.02: was resampled as "unequal spacing"
def test_two_slices_at_one_position_are_refused(tmp_path, offset_mm):
    positions = [(-94.0, -94.0, 5.0 * k) for k in range(10)] + [(-94.0, -94.0, 20.0 + offset_mm)]
    write_dicom_series(tmp_path / "ct", ramp, positions=positions)
    with pytest.raises(HermesError) as error:
        read_image(tmp_path / "ct")
    one_line(error, "same position")


# --------------------------------------------------------------------------- 3: damaged files

def _write(kind: str, folder) -> tuple:
    """(path to read, path to damage) of a small CT written as ``kind``."""
    image = as_image(body_ct())
    if kind == "nhdr":
        sitk.WriteImage(image, str(folder / "ct.nhdr"))
        return folder / "ct.nhdr", folder / "ct.raw"
    if kind == "mhd":
        sitk.WriteImage(image, str(folder / "ct.mhd"))
        return folder / "ct.mhd", folder / "ct.raw"
    path = folder / f"ct.{kind}"
    sitk.WriteImage(image, str(path), useCompression=kind in ("nii.gz", "nrrd", "mha"))
    return path, path


@pytest.mark.parametrize("kind", ["nii.gz", "nii", "nrrd", "mha", "nhdr", "mhd"])
def test_a_truncated_file_is_an_error(tmp_path, kind):
    path, data = _write(kind, tmp_path)
    truncate(data, 0.6)
    with pytest.raises(HermesError) as error:
        read_image(path)
    one_line(error, "truncated or damaged", path.name)


@pytest.mark.parametrize("kind", ["nii.gz", "nrrd", "mha", "nhdr-gz"])
def test_a_file_damaged_inside_its_compressed_stream_is_an_error(tmp_path, kind):
    if kind == "nhdr-gz":  # a detached header and its gzip data file
        sitk.WriteImage(as_image(body_ct()), str(tmp_path / "ct.nhdr"), useCompression=True)
        path, data = tmp_path / "ct.nhdr", next(tmp_path.glob("ct.raw*"))
    else:
        path, data = _write(kind, tmp_path)
    damaged = bytearray(data.read_bytes())
    for at in range(len(damaged) // 2, len(damaged) // 2 + 64):
        damaged[at] ^= 0x5A
    data.write_bytes(bytes(damaged))
    with pytest.raises(HermesError) as error:
        read_image(path)
    one_line(error, "truncated or damaged", path.name)


@pytest.mark.parametrize("kind", ["nhdr", "mhd"])
def test_a_header_whose_data_file_is_missing_names_it(tmp_path, kind):
    path, data = _write(kind, tmp_path)
    data.unlink()
    with pytest.raises(HermesError) as error:
        read_image(path)
    one_line(error, "ct.raw", "missing")


@pytest.mark.parametrize("keep", [0.0, 0.02])
def test_a_dicom_file_cut_before_its_marker_is_an_error_not_a_missing_slice(tmp_path, keep):
    write_dicom_series(tmp_path / "ct", ramp, positions=[(-94.0, -94.0, 2.5 * k) for k in range(10)])
    victim = sorted((tmp_path / "ct").iterdir())[4]
    truncate(victim, keep)  # empty, or shorter than the preamble and its 'DICM'
    with pytest.raises(HermesError) as error:
        read_image(tmp_path / "ct")
    one_line(error, victim.name)


def test_a_dicom_series_with_a_damaged_file_is_an_error(tmp_path):
    positions = [(-94.0, -94.0, 2.5 * k) for k in range(10)]
    write_dicom_series(tmp_path / "ct", ramp, positions=positions)
    victim = sorted((tmp_path / "ct").iterdir())[4]
    truncate(victim, 0.7)
    with pytest.raises(HermesError) as error:
        read_image(tmp_path / "ct")
    one_line(error, victim.name)


def test_a_damaged_single_dicom_file_is_an_error(tmp_path):
    write_dicom_series(tmp_path / "ct", ramp, positions=[(-94.0, -94.0, 0.0)])
    (victim,) = (tmp_path / "ct").iterdir()
    truncate(victim, 0.7)
    with pytest.raises(HermesError) as error:
        read_image(victim)
    one_line(error, victim.name)


# ------------------------------------------------------------------------------------ 4: NaN

@pytest.mark.parametrize("name,dtype,bad,word", [
    ("nan.nii.gz", np.float32, np.nan, "NaN"), ("nan.nii", np.float64, np.nan, "NaN"),
    ("inf.nii.gz", np.float32, -np.inf, "infinite"), ("nan.mha", np.float32, np.nan, "NaN"),
])
def test_nan_and_inf_are_refused_in_every_format(tmp_path, name, dtype, bad, word):
    values = body_ct().astype(dtype)
    values[5, 6, 7] = bad
    sitk.WriteImage(as_image(values), str(tmp_path / name))
    with pytest.raises(HermesError) as error:
        read_image(tmp_path / name)
    one_line(error, word)


# ------------------------------------------------------------------------- 11: several series

@pytest.fixture
def study(tmp_path):
    """A study folder as a PACS export leaves it: a topogram, two reconstructions of one CT
    (soft-tissue and bone kernels, equal slice counts), and a PET with fewer slices."""
    folder = tmp_path / "study"
    axial = [(-94.0, -94.0, 5.0 * k) for k in range(12)]
    uids = {
        "topogram": write_dicom_series(folder, lambda p: ramp(p), positions=[(-94.0, -94.0, 30.0)], series=1,
                                       description="Topogram 0.6 T20f"),
        "soft": write_dicom_series(folder, lambda p: ramp(p), positions=axial, series=2,
                                   description="Abdomen 1.0 B30f"),
        "bone": write_dicom_series(folder, lambda p: ramp(p) + 500.0, positions=axial, series=3,
                                   description="Abdomen 1.0 B70f"),
        "pet": write_dicom_series(folder, lambda p: np.full(p.shape[:-1], 3.0), positions=axial[:8], series=4,
                                  description="PET AC", modality="PT", intercept=0.0),
    }
    return folder, uids


def _mean(image):
    return float(sitk.GetArrayViewFromImage(image).mean())


def test_several_series_are_listed_and_one_is_picked_by_the_rule(study, caplog):
    folder, _ = study
    with caplog.at_level(logging.WARNING, logger="HermesSegmentLib"):
        image = read_image(folder, modality="CT")
    soft = _mean(image)
    warning = caplog.text
    for shown in ("4 DICOM series", "#2", "Abdomen 1.0 B30f", "#3", "Abdomen 1.0 B70f", "Topogram", "PET AC",
                  "12 slices", "--series"):
        assert shown in warning, warning
    bone = _mean(read_image(folder, modality="CT", series="b70F"))
    assert bone == pytest.approx(soft + 500.0, abs=1.0)


def test_series_chosen_by_uid_or_modality(study):
    folder, uids = study
    assert read_image(folder, series=uids["bone"]).GetSize()[2] == 12
    assert _mean(read_image(folder, series=uids["bone"])) > _mean(read_image(folder, series=uids["soft"]))
    pet = read_image(folder, modality="PET")
    assert pet.GetSize()[2] == 8 and _mean(pet) == pytest.approx(3.0)


def test_an_unknown_series_is_a_one_line_error_that_lists_them(study):
    folder, _ = study
    with pytest.raises(HermesError) as error:
        read_image(folder, series="venous")
    one_line(error, "venous", "B30f", "B70f")


# ------------------------------------------------------------------------------- 12: smaller

def test_a_single_dicom_file_says_to_pass_its_folder(tmp_path):
    write_dicom_series(tmp_path / "ct", ramp, positions=[(-94.0, -94.0, 2.5 * k) for k in range(6)])
    first = sorted((tmp_path / "ct").iterdir())[0]
    with pytest.raises(HermesError) as error:
        read_image(first)
    one_line(error, "one DICOM slice", "folder")


def test_image_headers_are_found_inside_folders(tmp_path):
    from HermesSegmentLib.batch import find_cases
    image = as_image(body_ct())
    sitk.WriteImage(image, str(tmp_path / "a.nhdr"))
    sitk.WriteImage(image, str(tmp_path / "b.mhd"))
    names = sorted(p.name for p in find_cases([str(tmp_path)]))
    assert names == ["a.nhdr", "b.mhd"]


# ---------------------------------------------------------------------------- 8: memory, read

def test_an_image_too_large_for_memory_says_so_with_its_size(tmp_path):
    import gzip

    # A valid 1 GiB int16 NIfTI that compresses to about a megabyte: a header, then zeros.
    header = sitk.Image(8, 8, 8, sitk.sitkInt16)
    sitk.WriteImage(header, str(tmp_path / "small.nii"))
    raw = bytearray((tmp_path / "small.nii").read_bytes()[:352])
    dims = np.array(  # the header's dim[0..7], at byte 40
        [3, 1024, 1024, 512, 1, 1, 1, 1], dtype="<i2")
    raw[40:56] = dims.tobytes()
    big = tmp_path / "big.nii.gz"
    with gzip.open(big, "wb", compresslevel=1) as f:
        f.write(bytes(raw))
        chunk = bytes(64 << 20)
        for _ in range(16):
            f.write(chunk)
    script = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(os.path.join(os.path.dirname(__file__), '..', 'HermesSegment'))!r})
        from HermesSegmentLib.read import read_image
        from HermesSegmentLib.errors import HermesError
        import SimpleITK, numpy
        vm = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (vm + (600 << 20), vm + (600 << 20)))
        try:
            read_image({str(big)!r})
        except HermesError as error:
            print("HermesError:", error)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    line = done.stdout.strip()
    assert line.startswith("HermesError:"), done.stdout + done.stderr
    assert "memory" in line and "1.0 GiB" in line and "please report" not in line, line
    assert "corrupt" not in line and "unsupported" not in line, line



def test_a_series_asked_of_an_image_file_is_said_to_be_ignored(tmp_path, caplog):
    # Before: --series with a file input was ignored without a word.
    path, _ = _write("nrrd", tmp_path)
    with caplog.at_level(logging.WARNING, logger="HermesSegmentLib"):
        read_image(path, series="arterial")
    assert "--series 'arterial' ignored" in caplog.text and path.name in caplog.text


def test_nan_in_another_frame_of_a_4d_nifti_does_not_refuse_the_frame_asked(tmp_path):
    # Before: a 4D NIfTI with NaN in frame 1 was refused even with --frame 0.
    volume = body_ct().astype(np.float32)
    frames = np.stack([volume, volume])
    frames[1, 3, 4, 5] = np.nan
    image = sitk.JoinSeries([as_image(frames[0]), as_image(frames[1])])
    path = tmp_path / "dynamic.nii.gz"
    sitk.WriteImage(image, str(path))
    assert np.isfinite(sitk.GetArrayViewFromImage(read_image(path, frame=0))).all()
    for frame in (1, None):
        with pytest.raises(HermesError) as error:
            read_image(path, frame=frame)
        one_line(error, "NaN")
