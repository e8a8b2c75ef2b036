"""The MRML side of HermesSegment: volume nodes in, segmentation nodes out (no Qt).

This file runs inside Slicer and under ``slicer-core`` (Slicer's MRML libraries on PyPI), so the
module's logic (``HermesSegment.HermesSegmentLogic``, the console API) and the tests share it::

    from HermesSegmentLib.slicer.mrml_logic import MRMLLogic
    seg = MRMLLogic().segment(volumeNode, modality="CT", targets=["liver", "spleen"])

Geometry: Slicer works in RAS, ITK (and the Hermes model) in LPS. A volume node's IJK->RAS matrix
is turned into an ITK image whose origin and direction are the same points and axes in LPS (x and
y negated), and masks come back on the input's own voxel grid, so no resampling happens here.

Ownership: every segment this module creates carries the tag :data:`TARGET_TAG` (the target key).
A re-run replaces exactly those segments for the targets asked for; segments without the tag
(the user's own) are never modified.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from .. import vocabulary
from ..errors import HermesError
from ..pipeline.options import SegmentOptions

logger = logging.getLogger(__name__)

#: Segment tag holding the target key of a segment created by HermesSegment.
TARGET_TAG = "HermesSegment.target"
#: Segment tag holding the model that produced the segment.
MODEL_TAG = "HermesSegment.model"
#: Volume attribute that Slicer's DICOM plugins set on loaded series.
DICOM_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"

_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])


class TargetMaskLike(Protocol):
    """What :meth:`MRMLLogic.import_result` reads from each ``mask.TargetMask``.

    ``key``: target key; ``color``: RGB 0-255 (or 0-1); ``array``: bool [z, y, x] crop of the input
    grid starting at voxel ``offset_zyx``.
    """

    key: str
    name: str
    color: Sequence[float]
    terminology: str
    offset_zyx: Sequence[int]
    array: np.ndarray


Segmenter = Callable[..., Any]
"""``pipeline.segment_image``-compatible callable: ``(image, *, modality, targets, ...) -> result``."""


def ijk_to_ras_array(volumeNode: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The volume's IJK->RAS matrix as a 4x4 numpy array (local coordinates, no parent transform)."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def ijk_to_lps_array(volumeNode: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The volume's (3, 4) IJK->LPS matrix [direction x spacing | origin], mm (no parent transform)."""
    return _RAS_TO_LPS @ ijk_to_ras_array(volumeNode)[:3, :]


def volume_to_sitk(volumeNode: slicer.vtkMRMLScalarVolumeNode) -> sitk.Image:
    """A SimpleITK image with the voxels and the exact geometry of a scalar volume node.

    The array is indexed [k, j, i] as in ``slicer.util.arrayFromVolume``; origin and direction are
    the node's IJK->RAS matrix expressed in LPS. A parent transform is not applied: results are
    placed under the same transform (see :meth:`MRMLLogic.import_result`); a non-linear one
    (Slicer's regularization of an irregular DICOM series) is warned about.
    """
    if volumeNode is None or volumeNode.GetImageData() is None:
        raise HermesError("the input volume has no image data; load a volume and select it as input")
    if volumeNode.GetImageData().GetNumberOfScalarComponents() != 1:
        raise HermesError(
            f"'{volumeNode.GetName()}' has several components per voxel (colour or vector image); "
            "convert it to a scalar volume first"
        )
    parent = volumeNode.GetParentTransformNode()
    if parent is not None and not parent.IsTransformToWorldLinear():
        logger.warning(
            "'%s' is under a non-linear transform ('%s'; e.g. Slicer's acquisition geometry regularization of a "
            "tilted or unequally spaced DICOM series): the model sees the voxels as acquired and the segmentation is "
            "placed under the same transform; harden the transform on the volume first for the model to see a "
            "regular grid", volumeNode.GetName(), parent.GetName())
    image = sitk.GetImageFromArray(np.array(slicer.util.arrayFromVolume(volumeNode), copy=True))
    lps = ijk_to_lps_array(volumeNode)
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in lps[:, 3]])
    image.SetDirection([float(d) for d in (lps[:, :3] / spacing).ravel()])
    return image


def mask_to_oriented_image(
    array: np.ndarray, offset_zyx: Sequence[int], ijk_to_ras: vtk.vtkMatrix4x4
) -> slicer.vtkOrientedImageData:
    """A binary labelmap (uint8, value 1) covering a crop of the reference grid.

    ``array`` is [z, y, x] = [k, j, i] and starts at voxel ``offset_zyx`` of the grid whose
    IJK->RAS matrix is ``ijk_to_ras``; the labelmap keeps that grid (no resampling).
    """
    labelmap = slicer.vtkOrientedImageData()
    labelmap.SetImageToWorldMatrix(ijk_to_ras)
    if array.size == 0 or not array.any():
        labelmap.SetExtent(0, -1, 0, -1, 0, -1)  # an empty segment, still typed as a labelmap
        labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        return labelmap
    k0, j0, i0 = (int(v) for v in offset_zyx)
    nk, nj, ni = array.shape
    labelmap.SetExtent(i0, i0 + ni - 1, j0, j0 + nj - 1, k0, k0 + nk - 1)
    labelmap.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    voxels = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
    voxels[:] = np.ascontiguousarray(array, dtype=np.uint8).ravel()
    labelmap.Modified()
    return labelmap


def color_01(color: Sequence[float]) -> tuple[float, float, float]:
    """Colour as three 0-1 floats; 0-255 integer colours (as in manifests) are scaled."""
    rgb = [float(c) for c in color[:3]]
    if any(c > 1.0 for c in rgb):
        rgb = [c / 255.0 for c in rgb]
    return rgb[0], rgb[1], rgb[2]


class MRMLLogic:
    """Blocking segmentation of volume nodes into segmentation nodes (MRML only, no Qt).

    ``segmenter`` defaults to :func:`HermesSegmentLib.pipeline.segment_image`; tests inject a
    stand-in with the same signature.
    """

    def __init__(self, segmenter: Segmenter | None = None) -> None:
        self._segmenter = segmenter

    # ---------------------------------------------------------------- running the model
    def segment(
        self,
        volumeNode: slicer.vtkMRMLScalarVolumeNode,
        modality: str,
        targets: Sequence[str] | str,
        options: SegmentOptions | None = None,
        segmentationNode: slicer.vtkMRMLSegmentationNode | None = None,
        progress: Callable[[str, float, str], None] | None = None,
        cancel: Any = None,
        server: str | None = None,
        token: str | None = None,
        **overrides: Any,
    ) -> slicer.vtkMRMLSegmentationNode:
        """Segment ``targets`` in ``volumeNode`` and return the (new or updated) segmentation node.

        Blocks until done. ``options`` (:class:`SegmentOptions`) and ``overrides`` of its fields
        (``model="hermes-demo"``, ``device="cpu"``, ``fast=True``...) are those of
        ``pipeline.segment_image``; ``progress(stage, fraction, message)`` and ``cancel`` (a
        ``CancelToken``) are passed on. ``server="https://..."`` runs the segmentation on a
        `hermes-segment serve` server instead (its ``token=`` or ``$HERMES_SEGMENT_TOKEN``; device and
        batch size are the server's); the result is imported the same way. Raises
        :class:`HermesError` for user mistakes.
        """
        options = dataclasses.replace(options or SegmentOptions(), **overrides)
        model_name = options.model if isinstance(options.model, str) else getattr(options.model, "name", "")
        if server:
            return self._segment_on_server(server, token, volumeNode, modality, targets, options, segmentationNode,
                                           progress, cancel)
        from ..pipeline import segment_image

        segmenter = self._segmenter or segment_image
        result = segmenter(volume_to_sitk(volumeNode), modality=modality, targets=targets, options=options,
                           progress=progress, cancel=cancel)
        return self.import_result(result, volumeNode, segmentationNode, model_name=str(model_name))

    def _segment_on_server(self, server: str, token: str | None, volumeNode: slicer.vtkMRMLScalarVolumeNode,
                           modality: str, targets: Sequence[str] | str, options: SegmentOptions,
                           segmentationNode: slicer.vtkMRMLSegmentationNode | None, progress: Any,
                           cancel: Any) -> slicer.vtkMRMLSegmentationNode:
        """The volume sent to the server (as NRRD), its .seg.nrrd imported as a background run's is."""
        import tempfile

        from ..server.client import ServerClient, job_request

        client = ServerClient(server, token)
        request = job_request(modality, targets, options, name="volume")
        with tempfile.TemporaryDirectory(prefix="hermes-server-") as folder:
            status, files = client.segment(volume_to_sitk(volumeNode), request, Path(folder), progress=progress,
                                           cancel=cancel, exclude=("summary.csv",))
            for warning in status["warnings"]:  # the server's notices, said here as a local run says them
                logger.warning("%s", warning)
            return self.import_file(files[0], volumeNode, segmentationNode, model_name=str(options.model))

    def import_file(
        self,
        path: str | Path,
        volumeNode: slicer.vtkMRMLScalarVolumeNode,
        segmentationNode: slicer.vtkMRMLSegmentationNode | None = None,
        model_name: str = "",
    ) -> slicer.vtkMRMLSegmentationNode:
        """Import a ``.seg.nrrd`` written by ``hermes-segment segment`` (the background run).

        The file must be on the volume's voxel grid (it is when the run's input was written from
        :func:`volume_to_sitk`); segment IDs in the file are the target keys.
        """
        from ..writers.seg_nrrd import read_seg_nrrd

        masks, reference = read_seg_nrrd(path)
        dimensions = tuple(volumeNode.GetImageData().GetDimensions())
        if tuple(reference.GetSize()) != dimensions:
            raise HermesError(
                f"{Path(path).name} has grid {reference.GetSize()} but '{volumeNode.GetName()}' has {dimensions}; "
                "segment the volume again"
            )
        return self.import_result(masks, volumeNode, segmentationNode, model_name)

    # ---------------------------------------------------------------- results into the scene
    def import_result(
        self,
        result: Any,
        volumeNode: slicer.vtkMRMLScalarVolumeNode,
        segmentationNode: slicer.vtkMRMLSegmentationNode | None = None,
        model_name: str = "",
    ) -> slicer.vtkMRMLSegmentationNode:
        """Write one segment per target of ``result`` (a ``SegmentationResult`` or a list of masks).

        Segments previously created by this module for the same targets are replaced in place
        (same ID and position); every other segment is left untouched.
        """
        masks: Iterable[TargetMaskLike] = getattr(result, "masks", result)
        scene = volumeNode.GetScene()
        if segmentationNode is None:
            segmentationNode = scene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", scene.GenerateUniqueName(f"{volumeNode.GetName()} Hermes")
            )
            segmentationNode.SetAndObserveTransformNodeID(volumeNode.GetTransformNodeID())
        elif segmentationNode.GetTransformNodeID() != volumeNode.GetTransformNodeID():
            raise HermesError(
                f"'{segmentationNode.GetName()}' and '{volumeNode.GetName()}' are under different transforms; "
                "choose 'Create new segmentation' or harden the transforms first"
            )
        segmentationNode.CreateDefaultDisplayNodes()
        if not _has_reference_geometry(segmentationNode):  # an existing one keeps its grid (and its DICOM SEG)
            segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
        ijk_to_ras = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijk_to_ras)

        segmentation = segmentationNode.GetSegmentation()
        owned = self.owned_segments(segmentationNode)
        wasModifying = segmentationNode.StartModify()
        try:
            for mask in masks:
                segment = slicer.vtkSegment()
                segment.SetName(mask.name)
                segment.SetNameAutoGenerated(False)
                segment.SetColor(*color_01(mask.color))
                segment.SetColorAutoGenerated(False)
                segment.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), mask.terminology)
                segment.SetTag(TARGET_TAG, mask.key)
                if model_name:
                    segment.SetTag(MODEL_TAG, model_name)
                segment.AddRepresentation(
                    slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(),
                    mask_to_oriented_image(np.asarray(mask.array), mask.offset_zyx, ijk_to_ras),
                )
                old_id = owned.get(mask.key)
                if old_id is None:
                    segmentation.AddSegment(segment, segmentation.GenerateUniqueSegmentID(mask.key))
                    continue
                index = segmentation.GetSegmentIndex(old_id)
                last = index + 1 >= segmentation.GetNumberOfSegments()
                after = "" if last else segmentation.GetNthSegmentID(index + 1)
                segmentation.RemoveSegment(old_id)
                segmentation.AddSegment(segment, old_id, after)
        finally:
            segmentationNode.EndModify(wasModifying)

        if not segmentationNode.CreateClosedSurfaceRepresentation():
            logger.info("no closed-surface converter available; the result shows in 2D views only")
        self._place_in_study(segmentationNode, volumeNode)
        return segmentationNode

    @staticmethod
    def owned_segments(segmentationNode: slicer.vtkMRMLSegmentationNode) -> dict[str, str]:
        """``{target key: segment ID}`` for the segments this module created in the node."""
        segmentation = segmentationNode.GetSegmentation()
        owned: dict[str, str] = {}
        for index in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(index)
            found, value = _get_tag(segmentation.GetSegment(segment_id), TARGET_TAG)
            if found:
                owned[value] = segment_id
        return owned

    @staticmethod
    def _place_in_study(
        segmentationNode: slicer.vtkMRMLSegmentationNode, volumeNode: slicer.vtkMRMLScalarVolumeNode
    ) -> None:
        """Put the segmentation under the input volume's parent (its study) in the subject hierarchy."""
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volumeNode.GetScene())
        volume_item = sh.GetItemByDataNode(volumeNode)
        if not volume_item:
            return
        parent = sh.GetItemParent(volume_item)
        item = sh.GetItemByDataNode(segmentationNode)
        if item:
            sh.SetItemParent(item, parent)
        else:
            sh.CreateItem(parent, segmentationNode)

    # ---------------------------------------------------------------- helpers for the widget
    @staticmethod
    def guess_modality(volumeNode: slicer.vtkMRMLScalarVolumeNode) -> str | None:
        """Modality key from the DICOM tags when the volume came from DICOM, else from its intensities
        (:func:`read.guess_modality`)."""
        from ..read import guess_modality

        dicom_modality, description = None, ""
        uids = (volumeNode.GetAttribute(DICOM_UIDS_ATTRIBUTE) or "").split()
        database = getattr(slicer, "dicomDatabase", None)
        if uids and database is not None:
            path = database.fileForInstance(uids[0])
            if path:
                dicom_modality = database.fileValue(path, "0008,0060")
                description = database.fileValue(path, "0008,103E")
        if volumeNode.GetImageData() is None:
            return vocabulary.modality_for_dicom(dicom_modality, description) if dicom_modality else None
        return guess_modality(slicer.util.arrayFromVolume(volumeNode), dicom_modality, description)

    @staticmethod
    def available_models() -> list[Any]:
        """The model catalog: ``models.ModelListing`` for bundled, downloadable and user models."""
        from .. import models

        return models.list_models()

    @staticmethod
    def targets_for(model: str | Path, modality: str) -> list[str]:
        """Target keys that ``model`` offers for ``modality`` (keys of ``defaults[modality]``, task order)."""
        from .. import models

        defaults = models.read_manifest(models.resolve(model)).get("defaults", {}).get(modality, {})
        return sorted(defaults, key=defaults.__getitem__)

    @staticmethod
    def target_groups(target_keys: Iterable[str]) -> list[tuple[str, list[tuple[str, str]]]]:
        """``[(region label, [(target key, display name), ...]), ...]`` for the grouped checklist."""
        from ..vocabulary import load_vocabulary

        vocabulary = load_vocabulary()
        groups: dict[str, list[tuple[str, str]]] = {region.label: [] for region in vocabulary.regions}
        for key in target_keys:
            target = vocabulary.targets.get(key)
            label = vocabulary.region(target.region).label if target else "Other"
            groups.setdefault(label, []).append((key, target.name if target else key))
        return [(label, items) for label, items in groups.items() if items]


def _has_reference_geometry(segmentationNode: slicer.vtkMRMLSegmentationNode) -> bool:
    """True when the segmentation already has a reference image geometry (set by Slicer or by us)."""
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    # all parameters at once: asking for a missing one by name logs an error
    serialized = segmentationNode.GetSegmentation().SerializeAllConversionParameters()
    return any(entry.startswith(f"{name}|") and entry.split("|")[1] for entry in serialized.split("&"))


def _get_tag(segment: slicer.vtkSegment, name: str) -> tuple[bool, str]:
    """``(found, value)`` of a segment tag (the C++ API fills a string by reference)."""
    value = vtk.reference("")
    found = segment.GetTag(name, value)
    return bool(found), str(value)
