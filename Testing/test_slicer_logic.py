"""MRMLLogic (the module logic's MRML side) against Slicer's real MRML libraries (slicer-core): geometry, import,
re-run, save.

A stand-in segmenter (same call signature as ``pipeline.segment_image``) returns a sphere at a
known physical point, so these tests pin down the volume-node <-> ITK geometry and the segment
import independently of the network. The last test runs the real pipeline with the demo model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer")
pytest.importorskip("vtk")
pytest.importorskip("SimpleITK")
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from HermesSegmentLib.errors import HermesError
from HermesSegmentLib.mask import TargetMask
from HermesSegmentLib.read import guess_modality
from HermesSegmentLib.slicer.mrml_logic import (
    MODEL_TAG,
    TARGET_TAG,
    MRMLLogic,
    color_01,
    mask_to_oriented_image,
    volume_to_sitk,
)
from HermesSegmentLib.writers import write_seg_nrrd

pytestmark = pytest.mark.slicer

REPO = Path(__file__).resolve().parents[1]
DEMO_MODEL = REPO / "HermesSegment" / "Resources" / "Models" / "hermes-demo.safetensors"
CENTER_RAS = np.array([12.0, -7.0, 15.0])
RADIUS_MM = 9.0
LIVER_TERM = (
    "Segmentation category and type - 3D Slicer General Anatomy list"
    "~SCT^123037004^Anatomical Structure~SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"
)


@dataclass
class FakeResult:
    """The part of ``pipeline.SegmentationResult`` that the logic reads."""

    masks: list[TargetMask]


def sphere_segmenter(image: sitk.Image, *, modality: str, targets, **kwargs) -> FakeResult:
    """Segment a sphere at CENTER_RAS (computed in LPS, as the real pipeline works) for each target."""
    size = image.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n) for n in reversed(size)), indexing="ij")
    index = np.stack([i.ravel(), j.ravel(), k.ravel()]).astype(float)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    lps = direction @ (np.array(image.GetSpacing())[:, None] * index) + np.array(image.GetOrigin())[:, None]
    center_lps = CENTER_RAS * np.array([-1, -1, 1])
    inside = (np.linalg.norm(lps - center_lps[:, None], axis=0) <= RADIUS_MM).reshape(k.shape)
    nz = np.argwhere(inside)
    lo, hi = nz.min(axis=0), nz.max(axis=0) + 1
    crop = inside[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    targets = [targets] if isinstance(targets, str) else list(targets)
    masks = [
        TargetMask(t, t.title(), (221, 130, 101), LIVER_TERM if t == "liver" else f"~SCT^0^{t}", tuple(lo), crop)
        for t in targets
    ]
    return FakeResult(masks)


def _matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def _rotation(axis: np.ndarray, degrees: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    x, y, z = axis
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array(
        [
            [c + x * x * (1 - c), x * y * (1 - c) - z * s, x * z * (1 - c) + y * s],
            [y * x * (1 - c) + z * s, c + y * y * (1 - c), y * z * (1 - c) - x * s],
            [z * x * (1 - c) - y * s, z * y * (1 - c) + x * s, c + z * z * (1 - c)],
        ]
    )


GEOMETRIES = {
    "identity": (np.eye(3), (1.0, 1.0, 1.0)),
    "flipped": (np.diag([-1.0, -1.0, 1.0]), (0.8, 0.9, 2.0)),
    "oblique": (_rotation(np.array([1.0, 2.0, 0.5]), 33.0), (1.1, 0.7, 1.6)),
}


def make_volume(scene, geometry: str, size=(48, 44, 40)) -> slicer.vtkMRMLScalarVolumeNode:
    """A scalar volume whose centre voxel sits at CENTER_RAS, with the named IJK->RAS matrix."""
    directions, spacing = GEOMETRIES[geometry]
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = directions * np.array(spacing)
    center_ijk = (np.array(size) - 1) / 2.0 + np.array([1.5, -2.0, 0.5])
    ijk_to_ras[:3, 3] = CENTER_RAS - ijk_to_ras[:3, :3] @ center_ijk
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"vol-{geometry}")
    image = vtk.vtkImageData()
    image.SetDimensions(*size)
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(_matrix(ijk_to_ras))
    rng = np.random.default_rng(0)
    slicer.util.arrayFromVolume(node)[:] = rng.integers(-1000, 400, size=tuple(reversed(size)))
    slicer.util.arrayFromVolumeModified(node)
    return node


def segment_voxels(segmentation_node, segment_id: str) -> tuple[bytes, tuple[float, ...], int]:
    """(mask bytes over the labelmap extent, extent + image-to-world matrix, voxel count)."""
    labelmap = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    mask = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars()) == label
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    geometry = tuple(labelmap.GetExtent()) + tuple(matrix.GetElement(r, c) for r in range(4) for c in range(4))
    return mask.tobytes(), geometry, int(mask.sum())


def segment_centroid_ras(segmentation_node, segment_id: str) -> tuple[np.ndarray, int]:
    """Centroid in RAS (through the labelmap's own geometry) and voxel count of a segment."""
    labelmap = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
    extent = labelmap.GetExtent()
    shape = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    kji = np.argwhere(values.reshape(shape) == label) + np.array([extent[4], extent[2], extent[0]])
    ijk = np.c_[kji[:, ::-1], np.ones(len(kji))]
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    m = np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])
    return (m @ ijk.T)[:3].mean(axis=1), len(kji)


@pytest.fixture()
def scene():
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():  # Slicer's Segmentations module registers it at startup
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    return slicer.vtkMRMLScene()


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_volume_to_sitk_keeps_physical_points(scene, geometry):
    volume = make_volume(scene, geometry)
    image = volume_to_sitk(volume)
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    for ijk in [(0, 0, 0), (47, 0, 0), (3, 41, 7), (47, 43, 39)]:
        ras = matrix.MultiplyPoint((*ijk, 1.0))[:3]
        lps = image.TransformIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(lps, (-ras[0], -ras[1], ras[2]), atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayViewFromImage(image), slicer.util.arrayFromVolume(volume))


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_segments_have_names_colours_terminology_and_place(scene, geometry):
    volume = make_volume(scene, geometry)
    logic = MRMLLogic(segmenter=sphere_segmenter)
    seg_node = logic.segment(volume, "CT", ["liver", "spleen"], model="fake")
    segmentation = seg_node.GetSegmentation()
    assert segmentation.GetNumberOfSegments() == 2
    owned = logic.owned_segments(seg_node)
    assert set(owned) == {"liver", "spleen"}
    liver = segmentation.GetSegment(owned["liver"])
    assert liver.GetName() == "Liver"
    np.testing.assert_allclose(liver.GetColor(), np.array([221, 130, 101]) / 255.0)
    assert liver.GetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), value := vtk.reference(""))
    assert str(value) == LIVER_TERM
    assert liver.GetTag(MODEL_TAG, model := vtk.reference("")) and str(model) == "fake"
    centroid, count = segment_centroid_ras(seg_node, owned["liver"])
    voxel_mm3 = abs(np.linalg.det(np.array(GEOMETRIES[geometry][0]) * np.array(GEOMETRIES[geometry][1])))
    assert count * voxel_mm3 == pytest.approx(4 / 3 * math.pi * RADIUS_MM**3, rel=0.1)
    np.testing.assert_allclose(centroid, CENTER_RAS, atol=0.3)
    # reference geometry is the input volume (needed for DICOM SEG export)
    assert seg_node.GetNodeReference("referenceImageGeometryRef").GetID() == volume.GetID()


def test_rerun_replaces_only_own_segments(scene):
    volume = make_volume(scene, "oblique")
    logic = MRMLLogic(segmenter=sphere_segmenter)
    seg_node = logic.segment(volume, "CT", ["liver"])
    user_id = seg_node.GetSegmentation().AddEmptySegment("my-edit", "My edit", [0.1, 0.9, 0.2])
    user_mask = np.zeros((10, 18, 20), dtype=bool)
    user_mask[2:8, 3:15, 4:16] = True
    ijk_to_ras = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(ijk_to_ras)
    labelmap = mask_to_oriented_image(user_mask, (10, 12, 5), ijk_to_ras)  # overlaps the sphere
    assert slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        labelmap, seg_node, user_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE, labelmap.GetExtent()
    )
    before = segment_voxels(seg_node, user_id)
    assert before[2] == user_mask.sum()
    liver_id = logic.owned_segments(seg_node)["liver"]

    logic.segment(volume, "CT", ["liver", "spleen"], segmentationNode=seg_node)

    segmentation = seg_node.GetSegmentation()
    assert [segmentation.GetNthSegmentID(i) for i in range(3)][:2] == [liver_id, user_id]
    assert logic.owned_segments(seg_node)["liver"] == liver_id
    assert segment_voxels(seg_node, user_id) == before
    assert segmentation.GetSegment(user_id).GetName() == "My edit"
    assert not segmentation.GetSegment(user_id).HasTag(TARGET_TAG)


def test_result_goes_into_the_input_study(scene):
    volume = make_volume(scene, "identity")
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "Patient")
    study = sh.CreateStudyItem(patient, "Study")
    sh.CreateItem(study, volume)
    seg_node = MRMLLogic(segmenter=sphere_segmenter).segment(volume, "CT", "liver")
    assert sh.GetItemParent(sh.GetItemByDataNode(seg_node)) == study


def test_saves_as_seg_nrrd_and_reads_back(scene, tmp_path):
    volume = make_volume(scene, "oblique")
    seg_node = MRMLLogic(segmenter=sphere_segmenter).segment(volume, "CT", ["liver", "spleen"])
    liver_id = MRMLLogic.owned_segments(seg_node)["liver"]
    expected_centroid, expected_count = segment_centroid_ras(seg_node, liver_id)
    path = tmp_path / "result.seg.nrrd"
    writer = scene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    writer.SetFileName(str(path))
    assert writer.WriteData(seg_node)

    other = slicer.vtkMRMLScene()
    loaded = other.AddNewNodeByClass("vtkMRMLSegmentationNode")
    reader = other.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    reader.SetFileName(str(path))
    assert reader.ReadData(loaded)
    owned = MRMLLogic.owned_segments(loaded)
    assert set(owned) == {"liver", "spleen"}
    liver = loaded.GetSegmentation().GetSegment(owned["liver"])
    assert liver.GetName() == "Liver"
    assert liver.GetTag("TerminologyEntry", value := vtk.reference("")) and str(value) == LIVER_TERM
    centroid, count = segment_centroid_ras(loaded, owned["liver"])
    assert count == expected_count
    np.testing.assert_allclose(centroid, expected_centroid, atol=1e-4)


def test_background_result_file_imports_in_place(scene, tmp_path):
    """The widget's path: input written from volume_to_sitk, engine writes .seg.nrrd, logic imports it."""
    volume = make_volume(scene, "oblique")
    image = volume_to_sitk(volume)
    path = tmp_path / "input.seg.nrrd"
    write_seg_nrrd(path, sphere_segmenter(image, modality="CT", targets=["liver"]).masks, image)
    seg_node = MRMLLogic().import_file(path, volume, model_name="hermes-demo")
    liver_id = MRMLLogic.owned_segments(seg_node)["liver"]
    liver = seg_node.GetSegmentation().GetSegment(liver_id)
    assert liver.GetName() == "Liver"
    assert liver.GetTag("TerminologyEntry", value := vtk.reference("")) and str(value) == LIVER_TERM
    centroid, _count = segment_centroid_ras(seg_node, liver_id)
    np.testing.assert_allclose(centroid, CENTER_RAS, atol=0.3)


def test_importable_without_qt():
    import subprocess
    import sys

    assert MRMLLogic.__module__ == "HermesSegmentLib.slicer.mrml_logic"
    # in a fresh interpreter: the panel tests of this session install a qt module of their own
    code = "import sys; from HermesSegmentLib.slicer.mrml_logic import MRMLLogic; print('qt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         cwd=REPO / "HermesSegment")
    assert out.stdout.strip() == "False"


def test_modality_guesses():
    mr = np.random.default_rng(1).integers(0, 800, 2000)
    assert guess_modality(mr, "PT") == "PET"
    assert guess_modality(mr, "MR", "t2_tse_tra") == "MR-T2"
    assert guess_modality(mr, "MR", "CINE sax") == "cine-MR"
    assert guess_modality(mr, "MR") == "MR"
    assert guess_modality(mr, "US") is None  # an unknown DICOM modality: the intensities decide
    rng = np.random.default_rng(1)
    assert guess_modality(np.r_[np.full(500, -1000), rng.integers(-100, 200, 1500)]) == "CT"
    assert guess_modality(rng.integers(0, 800, 2000)) is None
    assert color_01((255, 0, 51)) == (1.0, 0.0, 0.2)


@pytest.mark.slow
@pytest.mark.skipif(not DEMO_MODEL.exists(), reason="the demo model package is not built yet")
def test_real_pipeline_with_demo_model(scene):
    from HermesSegmentLib.phantoms import generate_case

    image, _labelmap, _info = generate_case(0, "CT")
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "phantom")
    _itk_into_volume(image, node)
    targets = MRMLLogic.targets_for("hermes-demo", "CT")
    events = []
    seg_node = MRMLLogic().segment(
        node, "CT", targets, model="hermes-demo", device="cpu", progress=lambda *e: events.append(e)
    )
    assert set(MRMLLogic.owned_segments(seg_node)) == set(targets)
    assert events and events[-1][1] == pytest.approx(1.0)


def _itk_into_volume(image: sitk.Image, node) -> None:
    """Copy a SimpleITK image (LPS) into a volume node (RAS) with the same physical geometry."""
    lps = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ lps
    ijk_to_ras[:3, 3] = np.array(image.GetOrigin()) * np.array([-1.0, -1.0, 1.0])
    array = sitk.GetArrayFromImage(image)
    vtk_image = vtk.vtkImageData()
    vtk_image.SetDimensions(*reversed(array.shape))
    vtk_image.AllocateScalars(vtk.VTK_FLOAT, 1)
    node.SetAndObserveImageData(vtk_image)
    node.SetIJKToRASMatrix(_matrix(ijk_to_ras))
    slicer.util.arrayFromVolume(node)[:] = array
    slicer.util.arrayFromVolumeModified(node)


@pytest.mark.slow
def test_sample_phantom_is_generated_once_and_loads_as_a_volume(scene, tmp_path):
    from HermesSegmentLib.slicer import sample_data

    path = sample_data.phantom_file(tmp_path)
    written = path.stat().st_mtime_ns
    assert sample_data.phantom_file(tmp_path) == path and path.stat().st_mtime_ns == written  # cached
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", sample_data.SAMPLE_NAME)
    _itk_into_volume(sitk.ReadImage(str(path)), node)
    assert MRMLLogic.guess_modality(node) == "CT"
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temporary file left


def _read_into_scene(scene, path: str, node_class: str, storage_class: str, name: str):
    """What ``slicer.util.loadVolume`` / ``loadSegmentation`` do for these files, with the MRML
    storage nodes slicer-core has (its ``slicer.util`` loaders need the application's IO manager)."""
    node = scene.AddNewNodeByClass(node_class, name)
    storage = scene.AddNewNodeByClass(storage_class)
    storage.SetFileName(path)
    assert storage.ReadData(node)
    return node


def test_bundled_real_sample_loads_with_its_clinical_contours_and_refuses_an_altered_file(scene, monkeypatch,
                                                                                            tmp_path):
    from HermesSegmentLib import bundled_samples
    from HermesSegmentLib.slicer import sample_data

    monkeypatch.setattr(slicer.util, "loadVolume", lambda path, properties: _read_into_scene(
        scene, path, "vtkMRMLScalarVolumeNode", "vtkMRMLVolumeArchetypeStorageNode", properties["name"]))
    monkeypatch.setattr(slicer.util, "loadSegmentation", lambda path: _read_into_scene(
        scene, path, "vtkMRMLSegmentationNode", "vtkMRMLSegmentationStorageNode", Path(path).name))
    [entry] = bundled_samples.bundled_samples()
    volume, contours = sample_data.load_bundled_sample(entry["name"])
    assert volume.GetName() == entry["name"] and volume.GetImageData().GetDimensions() == (128, 128, 128)
    assert MRMLLogic.guess_modality(volume) == "CT"
    segments = contours.GetSegmentation()
    assert contours.GetName() == f"{entry['name']} clinical contours"
    assert sorted(segments.GetNthSegmentID(i) for i in range(segments.GetNumberOfSegments())) == sorted(
        entry["contours"]["targets"])

    altered = tmp_path / "SampleData"
    altered.mkdir()
    for part in ("image", "contours"):
        (altered / entry[part]["file"]).write_bytes((bundled_samples.SAMPLE_DATA / entry[part]["file"]).read_bytes())
    (altered / "samples.json").write_text((bundled_samples.SAMPLE_DATA / "samples.json").read_text())
    image = altered / entry["image"]["file"]
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 0xFF
    image.write_bytes(bytes(data))
    monkeypatch.setattr(bundled_samples, "SAMPLE_DATA", altered)
    with pytest.raises(HermesError, match="SHA-256 differs"):
        sample_data.load_bundled_sample(entry["name"])
    with pytest.raises(HermesError, match="unknown sample"):
        bundled_samples.bundled_sample("NoSuchSample")


def test_result_follows_the_volume_parent_transform(scene):
    volume = make_volume(scene, "identity")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    volume.SetAndObserveTransformNodeID(transform.GetID())
    logic = MRMLLogic(segmenter=sphere_segmenter)
    seg_node = logic.segment(volume, "CT", "liver")
    assert seg_node.GetTransformNodeID() == transform.GetID()
    other = scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    with pytest.raises(HermesError, match="different transforms"):
        logic.segment(volume, "CT", "liver", segmentationNode=other)


def test_empty_mask_gives_an_empty_segment_and_no_image_is_a_clear_error(scene):
    volume = make_volume(scene, "flipped")
    empty = TargetMask("spleen", "Spleen", (157, 108, 162), "", (0, 0, 0), np.zeros((0, 0, 0), dtype=bool))
    seg_node = MRMLLogic().import_result([empty], volume)
    segment_id = MRMLLogic.owned_segments(seg_node)["spleen"]
    assert segment_voxels(seg_node, segment_id)[2] == 0
    with pytest.raises(HermesError, match="no image data"):
        volume_to_sitk(scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode"))
