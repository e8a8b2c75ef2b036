"""read.py, preprocess/ and postprocess/to_input_grid.py: reading, model space, and mapping results back to the
input grid (CPU, small)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import SimpleITK as sitk

from HermesSegmentLib import read
from HermesSegmentLib.errors import HermesError
from HermesSegmentLib.postprocess import to_input_grid
from HermesSegmentLib.preprocess import model_space

CT_NORM = {"method": "clip_zscore", "clip": [-991, 500]}
PCT_NORM = {"method": "percentile_clip_zscore", "percentiles": [2, 98]}
MODEL_SPACING = (1.5, 1.5, 1.5)
CENTRE = np.array([3.0, -7.0, 11.0])  # LPS mm: the sphere and the body are centred here


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = (math.cos(ax), math.sin(ax), math.cos(ay), math.sin(ay),
                              math.cos(az), math.sin(az))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


DIRECTIONS = {
    "identity": np.eye(3),
    "flipped_ras": np.diag([-1.0, -1.0, 1.0]),  # what a RAS-stored NIfTI becomes in LPS
    "oblique": rotation(0.3, -0.2, 0.5),
}


def physical_points(image: sitk.Image) -> np.ndarray:
    """LPS coordinates (z, y, x, 3) of every voxel centre of ``image``."""
    nx, ny, nz = image.GetSize()
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(float)
    matrix = np.asarray(image.GetDirection()).reshape(3, 3) * np.asarray(image.GetSpacing())
    return index @ matrix.T + np.asarray(image.GetOrigin())


def make_image(direction: np.ndarray, spacing=(0.8, 0.9, 2.0), size=(48, 44, 24)) -> sitk.Image:
    """A CT-like volume (air -1000 HU, an ellipsoidal 'body' of 40 HU) centred on CENTRE."""
    image = sitk.Image(size, sitk.sitkInt16)
    image.SetSpacing(spacing)
    image.SetDirection(tuple(direction.ravel()))
    extent_centre = direction @ ((np.asarray(size) - 1) / 2 * np.asarray(spacing))
    image.SetOrigin(tuple(CENTRE - extent_centre))
    pts = physical_points(image) - CENTRE
    body = (pts[..., 0] / 16) ** 2 + (pts[..., 1] / 14) ** 2 + (pts[..., 2] / 18) ** 2 <= 1
    values = np.where(body, 40, -1000).astype(np.int16)
    out = sitk.GetImageFromArray(values)
    out.CopyInformation(image)
    return out


def sphere_probability(model: model_space.ModelSpaceImage, radius: float, width: float) -> np.ndarray:
    """Smooth indicator of the sphere around CENTRE, sampled on the model crop's grid."""
    crop = model.crop_image(np.zeros(model.array.shape, dtype=np.uint8))
    dist = np.linalg.norm(physical_points(crop) - CENTRE, axis=-1)
    return (1 / (1 + np.exp((dist - radius) / width))).astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


# ------------------------------------------------------------------------------------------
# Geometry round trip


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_sphere_comes_back_in_the_same_physical_place(name):
    image = make_image(DIRECTIONS[name])
    model = model_space.to_model_space(image, spacing_zyx=MODEL_SPACING, normalization=CT_NORM,
                                   modality="CT")
    assert model.array.dtype == np.float32
    assert model.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    prob = sphere_probability(model, radius=8.0, width=0.5)
    reference = to_input_grid.reference_geometry(image)
    crop = to_input_grid.probabilities_to_mask(prob, model, reference)

    shape = image.GetSize()[::-1]
    mask = crop.full(shape)
    pts = physical_points(image)
    truth = np.linalg.norm(pts - CENTRE, axis=-1) <= 8.0
    assert dice(mask, truth) > 0.93
    centroid = pts[mask].mean(axis=0)
    assert np.linalg.norm(centroid - CENTRE) < 0.5  # mm
    # The crop is the tight bounding box of the mask.
    assert np.asarray(crop.array.any(axis=(1, 2)))[[0, -1]].all()
    # from_model_space agrees with probabilities_to_mask (same linear resampling).
    dense = to_input_grid.from_model_space(prob, model, reference, interpolation="linear")
    assert dense.shape == shape
    # The two paths resample different buffers (the target's box vs the whole crop); for an
    # oblique grid ITK's inside-the-buffer test at a box edge (index -0.5) is float-rounding
    # sensitive and varies between runs, flipping a handful of edge voxels (3 of 50688 seen).
    assert ((dense >= 0.5) != mask).mean() < 1e-3


def test_linear_probabilities_beat_nearest_labels():
    """The measurement behind the module docstring's resampling decision."""
    image = make_image(np.eye(3), spacing=(0.7, 0.7, 3.0), size=(64, 64, 16))
    model = model_space.to_model_space(image, spacing_zyx=MODEL_SPACING, normalization=CT_NORM,
                                   modality="CT")
    prob = sphere_probability(model, radius=12.0, width=0.75)
    reference = to_input_grid.reference_geometry(image)
    truth = np.linalg.norm(physical_points(image) - CENTRE, axis=-1) <= 12.0
    shape = truth.shape

    linear = to_input_grid.probabilities_to_mask(prob, model, reference).full(shape)
    quantised = np.round(prob * 255).astype(np.uint8)
    linear_u8 = to_input_grid.probabilities_to_mask(quantised, model, reference).full(shape)
    labels = (prob >= 0.5).astype(np.uint8)
    nearest = to_input_grid.from_model_space(labels, model, reference, interpolation="nearest") > 0
    np.testing.assert_array_equal(
        to_input_grid.from_model_space(labels.astype(bool), model, reference, interpolation="nearest"),
        nearest)

    d_linear, d_u8, d_nearest = dice(linear, truth), dice(linear_u8, truth), dice(nearest, truth)
    print(f"Dice vs analytic sphere: linear {d_linear:.4f}, linear uint8 {d_u8:.4f}, "
          f"nearest labels {d_nearest:.4f}")
    assert d_linear > d_nearest
    assert abs(d_linear - d_u8) < 0.002


def test_empty_probability_gives_empty_crop():
    image = make_image(np.eye(3))
    model = model_space.to_model_space(image, spacing_zyx=MODEL_SPACING, normalization=CT_NORM)
    crop = to_input_grid.probabilities_to_mask(np.zeros(model.array.shape, np.float32), model,
                                         to_input_grid.reference_geometry(image))
    assert crop.array.shape == (0, 0, 0)


def test_reference_geometry_keeps_the_grid():
    image = make_image(DIRECTIONS["oblique"])
    ref = to_input_grid.reference_geometry(image)
    assert ref.GetSize() == image.GetSize()
    assert ref.GetOrigin() == image.GetOrigin()
    assert ref.GetSpacing() == image.GetSpacing()
    assert ref.GetDirection() == image.GetDirection()
    assert ref.GetPixelID() == sitk.sitkUInt8


# ------------------------------------------------------------------------------------------
# Normalisation and body crop


def test_clip_zscore_matches_definition():
    rng = np.random.default_rng(0)
    values = rng.normal(0, 800, size=(10, 12, 14)).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.5, 1.5, 1.5))
    model = model_space.to_model_space(image, spacing_zyx=MODEL_SPACING, normalization=CT_NORM,
                                   crop_to_body=False)
    clipped = np.clip(values.astype(np.float64), -991, 500)
    expected = (clipped - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(model.array, expected, atol=1e-4)


def test_percentile_clip_zscore_matches_definition():
    rng = np.random.default_rng(1)
    values = rng.exponential(3.0, size=(10, 12, 14)).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.5, 1.5, 1.5))
    model = model_space.to_model_space(image, spacing_zyx=MODEL_SPACING, normalization=PCT_NORM,
                                   crop_to_body=False)
    lo, hi = np.percentile(values, [2, 98])
    clipped = np.clip(values.astype(np.float64), lo, hi)
    expected = (clipped - clipped.mean()) / clipped.std()
    np.testing.assert_allclose(model.array, expected, atol=1e-4)


def test_unknown_normalization_is_a_hermes_error():
    with pytest.raises(HermesError, match="unsupported normalization"):
        model_space.to_model_space(make_image(np.eye(3)), spacing_zyx=MODEL_SPACING,
                               normalization={"method": "minmax"})


def test_body_crop_excludes_air():
    # A 1.5 mm grid with a 30 mm cube of tissue in a 150 mm field of view of air.
    values = np.full((100, 100, 100), -1000, dtype=np.int16)
    values[40:60, 30:50, 50:70] = 50
    image = sitk.GetImageFromArray(values)
    image.SetSpacing((1.5, 1.5, 1.5))
    model = model_space.to_model_space(image, spacing_zyx=MODEL_SPACING, normalization=CT_NORM,
                                   modality="CT")
    assert model.grid_size_zyx == (100, 100, 100)
    assert model.crop_offset_zyx == tuple(a for a, _ in model.body_box)
    for (start, stop), (b0, b1) in zip(model.body_box, [(40, 60), (30, 50), (50, 70)]):
        assert start <= b0 and stop >= b1          # the body is inside the crop
        assert b0 - start <= 10 and stop - b1 <= 10  # margin: 10 mm + one 3 mm block, ~9 voxels
    assert model.array.size < 0.05 * values.size
    # MR-like: dark air, bright body, same crop logic with a percentile threshold.
    mr = sitk.GetImageFromArray(np.where(values > 0, 400.0, 3.0).astype(np.float32))
    mr.SetSpacing((1.5, 1.5, 1.5))
    mr_model = model_space.to_model_space(mr, spacing_zyx=MODEL_SPACING, normalization=PCT_NORM,
                                      modality="MR")
    assert mr_model.body_box == model.body_box
    # With the sliding window's lattice the crop grows to whole lattice windows around the body.
    from HermesSegmentLib.inference.windows import lattice_box

    aligned = model_space.to_model_space(image, spacing_zyx=MODEL_SPACING, normalization=CT_NORM,
                                     modality="CT", window_lattice=((16, 16, 16), 0.5))
    assert aligned.body_box == lattice_box(model.body_box, (100, 100, 100), (16, 16, 16), 0.5)
    assert all(start % 8 == 0 for start, _ in aligned.body_box) and aligned.body_box != model.body_box
    np.testing.assert_array_equal(aligned.array[tuple(slice(a - c, b - c) for (a, b), (c, _) in
                                                      zip(model.body_box, aligned.body_box))], model.array)


@pytest.mark.parametrize("stored", ["LPS", "RAS"])
def test_midline_is_the_centre_of_the_body_across_the_patient(stored):
    def slab(values):  # x spacing 1 mm; RAS-stored: index i lies at x = 99 - i mm (LPS)
        image = sitk.GetImageFromArray(values)
        image.SetSpacing((1.0, 1.5, 1.5))
        if stored == "RAS":
            image.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
            image.SetOrigin((99.0, 28.5, 0.0))
        return image

    x_mm = np.arange(100.0) if stored == "LPS" else 99.0 - np.arange(100.0)
    values = np.full((20, 20, 100), -1000, dtype=np.int16)
    values[:, 2:14, (x_mm >= 20) & (x_mm < 50)] = 40  # tissue from 20 to 50 mm towards the patient's left
    model = model_space.to_model_space(slab(values), spacing_zyx=MODEL_SPACING, normalization=CT_NORM, modality="CT",
                                   crop_to_body=False)
    assert model.midline_x is not None, "no midline found"
    midline_mm = model.origin_xyz[0] + model.midline_x * model.spacing_zyx[2]
    assert abs(midline_mm - 34.5) <= 3.0  # the body is found on 3 mm blocks
    values[:, 18:19, :] = 40  # a thin table across the whole field of view, apart from the trunk
    with_table = model_space.to_model_space(slab(values), spacing_zyx=MODEL_SPACING, normalization=CT_NORM,
                                            modality="CT")
    assert with_table.midline_x == model.midline_x
    values[:, 2:14, :] = 40  # a trunk cut by the field of view has no known centre
    assert model_space.to_model_space(slab(values), spacing_zyx=MODEL_SPACING, normalization=CT_NORM,
                                  modality="CT").midline_x is None


# ------------------------------------------------------------------------------------------
# Reading and its errors


def assert_one_line_error(excinfo, text: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    assert text in message


def test_read_nifti_keeps_oblique_geometry(tmp_path):
    image = make_image(DIRECTIONS["oblique"])
    for name in ("a.nii.gz", "a.nrrd", "a.mha"):
        sitk.WriteImage(image, str(tmp_path / name))
        back = read.read_image(tmp_path / name)
        np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)
        np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back),
                                      sitk.GetArrayViewFromImage(image))


def test_read_missing_file(tmp_path):
    with pytest.raises(HermesError) as e:
        read.read_image(tmp_path / "nope.nii.gz")
    assert_one_line_error(e, "no such file")


def test_read_corrupt_file(tmp_path):
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(b"this is not an image" * 10)
    with pytest.raises(HermesError) as e:
        read.read_image(path)
    assert_one_line_error(e, "cannot read the image")


def test_read_2d_image(tmp_path):
    sitk.WriteImage(sitk.Image([16, 16], sitk.sitkInt16), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(HermesError) as e:
        read.read_image(tmp_path / "flat.nii.gz")
    assert_one_line_error(e, "2D image")
    assert "needs a 3D volume" in str(e.value)


def test_read_3d_with_singleton_dimension(tmp_path):
    sitk.WriteImage(sitk.Image([16, 16, 1], sitk.sitkInt16), str(tmp_path / "slice.nrrd"))
    with pytest.raises(HermesError) as e:
        read.read_image(tmp_path / "slice.nrrd")
    assert_one_line_error(e, "2D image")


def test_read_4d_needs_a_frame(tmp_path):
    values = np.arange(3 * 4 * 5 * 6, dtype=np.float32).reshape(3, 4, 5, 6)  # [t, z, y, x]
    sitk.WriteImage(sitk.GetImageFromArray(values, isVector=False), str(tmp_path / "t.nii.gz"))
    with pytest.raises(HermesError) as e:
        read.read_image(tmp_path / "t.nii.gz")
    assert_one_line_error(e, "4D image with 3 frames; pick one with --frame N")
    frame = read.read_image(tmp_path / "t.nii.gz", frame=2)
    assert frame.GetSize() == (6, 5, 4)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(frame), values[2])
    with pytest.raises(HermesError) as e:
        read.read_image(tmp_path / "t.nii.gz", frame=3)
    assert_one_line_error(e, "frame 3 out of range")


def test_read_rgb_is_refused(tmp_path):
    rgb = sitk.Image([8, 8, 8], sitk.sitkVectorUInt8, 3)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.mha"))
    with pytest.raises(HermesError) as e:
        read.read_image(tmp_path / "rgb.mha")
    assert_one_line_error(e, "3 components per voxel")


def test_read_nan_and_inf_are_refused(tmp_path):
    values = np.zeros((4, 5, 6), dtype=np.float32)
    values[2, 3, 4] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / "nan.nrrd"))
    with pytest.raises(HermesError) as e:
        read.read_image(tmp_path / "nan.nrrd")
    assert_one_line_error(e, "image contains NaN values")
    values[2, 3, 4] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(values), str(tmp_path / "inf.nrrd"))
    with pytest.raises(HermesError) as e:
        read.read_image(tmp_path / "inf.nrrd")
    assert_one_line_error(e, "infinite values")


def write_dicom_series(image: sitk.Image, folder, modality: str, series_uid: str) -> None:
    """One file per slice with the tags a scanner writes (position, orientation, modality)."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    orientation = "\\".join(f"{v:.10f}" for v in (direction[0], direction[3], direction[6],
                                                   direction[1], direction[4], direction[7]))
    for k in range(image.GetDepth()):
        sl = image[:, :, k]
        tags = {
            "0008|0060": modality,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": series_uid,
            "0020|0037": orientation,
            "0020|0032": "\\".join(f"{v:.10f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k + 1),
            "0018|0050": str(image.GetSpacing()[2]),
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{series_uid}.{k + 1}",
        }
        for key, value in tags.items():
            sl.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"{series_uid[-1]}_slice{k:03d}.dcm"))
        writer.Execute(sl)


def test_read_dicom_series_keeps_geometry(tmp_path, caplog):
    image = make_image(DIRECTIONS["oblique"], size=(20, 18, 8))
    write_dicom_series(image, tmp_path / "dcm", "CT", "1.2.826.0.1.3680043.2.1125.2")
    back = read.read_image(tmp_path / "dcm")
    assert back.GetSize() == image.GetSize()
    np.testing.assert_allclose(back.GetOrigin(), image.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(back.GetSpacing(), image.GetSpacing(), atol=1e-3)
    np.testing.assert_allclose(back.GetDirection(), image.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(back), sitk.GetArrayViewFromImage(image))
    assert read.dicom_modality(tmp_path / "dcm") == "CT"
    assert read.guess_modality(back, read.dicom_modality(tmp_path / "dcm")) == "CT"

    # A second, smaller series in the same folder: the larger one is read, with a warning.
    write_dicom_series(image[:, :, :3], tmp_path / "dcm", "CT", "1.2.826.0.1.3680043.2.1125.3")
    with caplog.at_level(logging.WARNING, logger="HermesSegmentLib.read"):
        again = read.read_image(tmp_path / "dcm")
    assert again.GetSize() == image.GetSize()
    assert "2 DICOM series" in caplog.text


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(HermesError) as e:
        read.read_image(tmp_path)
    assert_one_line_error(e, "no DICOM series found")


def test_guess_modality():
    ct = make_image(np.eye(3))
    ct_with_bone = sitk.Add(ct, sitk.Cast(sitk.Greater(ct, 0), sitk.sitkInt16) * 1200)
    assert read.guess_modality(ct_with_bone) == "CT"
    rng = np.random.default_rng(2)
    pet = sitk.GetImageFromArray(rng.exponential(0.5, size=(20, 20, 20)).astype(np.float32))
    assert read.guess_modality(pet) == "PET"
    mr = sitk.GetImageFromArray(rng.uniform(0, 800, size=(20, 20, 20)).astype(np.float32))
    assert read.guess_modality(mr) is None
    assert read.guess_modality(mr, "MR") == "MR"
    assert read.guess_modality(mr, "PT") == "PET"
    assert read.dicom_modality("/nonexistent/file.dcm") is None


def test_the_manifest_schema_names_the_registry_normalisations():
    from HermesSegmentLib.models.manifest import manifest_schema
    from HermesSegmentLib.preprocess.normalization import NORMALIZATIONS

    entry = manifest_schema()["properties"]["modalities"]["items"]["properties"]["normalization"]
    in_schema = {choice["properties"]["method"]["const"] for choice in entry["oneOf"]}
    assert in_schema == set(NORMALIZATIONS)
    for choice in entry["oneOf"]:  # and each method's parameters are the ones its class reads
        method = choice["properties"]["method"]["const"]
        assert set(choice["required"]) - {"method"} == set(NORMALIZATIONS[method].parameters), method


def test_a_new_normalisation_is_one_class_and_one_registry_line(monkeypatch, tiny_package):
    """The extension point works end to end: a class and a registry entry, and a model naming it."""
    from HermesSegmentLib import models
    from HermesSegmentLib.pipeline import segment_image
    from HermesSegmentLib.preprocess.normalization import NORMALIZATIONS, Normalization

    class Shift(Normalization):
        method = "toy_shift"
        parameters = ("offset",)

        def __call__(self, array):
            array += np.float32(self.entry["offset"])

    monkeypatch.setitem(NORMALIZATIONS, Shift.method, Shift)  # the one registry line
    image = make_image(np.eye(3), size=(24, 20, 16))
    shifted, plain = (model_space.to_model_space(image, spacing_zyx=MODEL_SPACING, crop_to_body=False,
                                                 normalization={"method": "toy_shift", "offset": offset})
                      for offset in (1000.0, 0.0))
    np.testing.assert_allclose(shifted.array, plain.array + 1000.0, atol=1e-3)

    loaded = models.load(tiny_package)
    for entry in loaded.manifest["modalities"]:
        entry["normalization"] = {"method": "toy_shift", "offset": 0.0}
    result = segment_image(image, modality="CT", targets=["liver"], model=loaded, device="cpu",
                           keep_probabilities=True)
    assert result.model_space is not None and result.model_space.array.min() < -500  # HU, not z-scores
    with pytest.raises(HermesError, match="lacks offset"):
        model_space.to_model_space(image, spacing_zyx=MODEL_SPACING, normalization={"method": "toy_shift"})


def test_fixed_statistics_make_ct_intensities_independent_of_the_field_of_view():
    """clip_fixed_zscore: the same tissue gets the same value in a tight and in a wide field of
    view (a per-volume z-score moves it: more air, lower mean)."""
    from HermesSegmentLib.preprocess.normalization import normalization_for

    body = np.full((24, 24, 24), 40.0, np.float32)
    wide = np.full((24, 64, 64), -1000.0, np.float32)
    wide[:, 20:44, 20:44] = 40.0
    fixed = {"method": "clip_fixed_zscore", "clip": [-991.0, 500.0], "mean": -500.0, "std": 500.0}
    per_volume = {"method": "clip_zscore", "clip": [-991.0, 500.0]}
    values = {}
    for name, entry in (("fixed", fixed), ("per_volume", per_volume)):
        tight, whole = body.copy(), wide.copy()
        normalization_for(entry)(tight)
        normalization_for(entry)(whole)
        values[name] = (float(tight[0, 0, 0]), float(whole[0, 30, 30]))
    assert values["fixed"][0] == values["fixed"][1] == pytest.approx(1.08)
    assert abs(values["per_volume"][0] - values["per_volume"][1]) > 1.0
    with pytest.raises(HermesError, match="std > 0"):
        normalization_for({**fixed, "std": 0.0})
