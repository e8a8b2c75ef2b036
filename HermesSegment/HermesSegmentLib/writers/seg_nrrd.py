"""Slicer .seg.nrrd: write (slab by slab, overlaps in layers) and read back.

``.seg.nrrd`` layout (what Slicer's segmentation storage node writes and reads): the voxels lie
on the reference (input) grid, ``space: left-posterior-superior``, ``space directions`` =
direction x spacing (oblique kept, written with 17 significant digits), one label value per
segment. Segments that do not overlap share a layer; a segment that overlaps one already in every
layer opens a new layer, and then the file is 4D with a leading ``list`` axis of layers
(``kinds: list domain domain domain``), as Slicer writes it. The file is written slab by slab
(one z slice of all layers at a time), so memory stays at the masks' bounding boxes plus one
slice, whatever the number of targets.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import numpy as np
import SimpleITK as sitk

from ..atomic import atomic_paths
from ..errors import HermesError
from ..mask import TargetMask, check_on_grid
from .base import MARK, SegmentationWriter

PathLike = Union[str, Path]


# --------------------------------------------------------------------------------------------
# Slicer .seg.nrrd


def write_seg_nrrd(path: PathLike, masks: Sequence[TargetMask], reference: sitk.Image) -> None:
    """Write ``masks`` as a Slicer segmentation on ``reference``'s grid (see module docstring).

    Segment i gets ID = target key (made unique), Name, Color, Extent, Layer, LabelValue and
    Tags "TerminologyEntry:<terminology>|".
    """
    shape = check_on_grid(masks, reference)
    layers, labels = _assign_layers(masks)
    n_layers = max(layers, default=0) + 1
    dtype = np.dtype("<u1") if max(labels, default=0) <= 255 else np.dtype("<u2")
    header = _seg_header(masks, reference, shape, layers, labels, n_layers, dtype)
    with atomic_paths([path]) as (temp,):
        with open(temp, "wb") as f:
            f.write(header.encode("utf-8"))
            gzip = zlib.compressobj(1, zlib.DEFLATED, 31)  # wbits 31: gzip stream, as NRRD wants
            for z in range(shape[0]):
                f.write(gzip.compress(_seg_slab(z, masks, layers, labels, shape, n_layers, dtype)))
            f.write(gzip.flush())


def _assign_layers(masks: Sequence[TargetMask]) -> Tuple[List[int], List[int]]:
    """Greedy: each mask goes to the first layer it does not overlap; label values count up
    from 1 within each layer."""
    layer_members: List[List[int]] = []
    layers, labels = [], []
    for i, mask in enumerate(masks):
        layer = next((n for n, members in enumerate(layer_members)
                      if not any(_overlap(mask, masks[j]) for j in members)), len(layer_members))
        if layer == len(layer_members):
            layer_members.append([])
        members = layer_members[layer]
        members.append(i)
        layers.append(layer)
        labels.append(len(members))
    return layers, labels


def _overlap(a: TargetMask, b: TargetMask) -> bool:
    lo = [max(oa, ob) for oa, ob in zip(a.offset_zyx, b.offset_zyx)]
    hi = [min(oa + na, ob + nb) for oa, na, ob, nb in
          zip(a.offset_zyx, a.array.shape, b.offset_zyx, b.array.shape)]
    if any(stop <= start for start, stop in zip(lo, hi)):
        return False
    sa = tuple(slice(start - o, stop - o) for start, stop, o in zip(lo, hi, a.offset_zyx))
    sb = tuple(slice(start - o, stop - o) for start, stop, o in zip(lo, hi, b.offset_zyx))
    return bool(np.logical_and(a.array[sa], b.array[sb]).any())


def _seg_slab(z, masks, layers, labels, shape, n_layers, dtype) -> bytes:
    """Bytes of slice z: [y, x, layer] in C order, i.e. layer fastest, then x, then y."""
    slab = np.zeros((shape[1], shape[2], n_layers), dtype=dtype)
    for mask, layer, label in zip(masks, layers, labels):
        oz, oy, ox = mask.offset_zyx
        if oz <= z < oz + mask.array.shape[0]:
            part = mask.array[z - oz]
            region = slab[oy:oy + part.shape[0], ox:ox + part.shape[1], layer]
            region[part] = label
    return slab.tobytes()


def _nrrd_value(value: str) -> str:
    """NRRD key/value escaping: backslash and newline."""
    return str(value).replace("\\", "\\\\").replace("\n", "\\n")


def _vec(values: Iterable[float]) -> str:
    return "(" + ",".join(f"{float(v):.17g}" for v in values) + ")"


def _seg_header(masks, reference, shape, layers, labels, n_layers, dtype) -> str:
    spacing = np.asarray(reference.GetSpacing())
    direction = np.asarray(reference.GetDirection()).reshape(3, 3)
    columns = direction * spacing  # column i = physical step of index axis i (LPS)
    axes = " ".join(_vec(columns[:, i]) for i in range(3))
    sizes = " ".join(str(n) for n in shape[::-1])
    lines = ["NRRD0004",
             "# Complete NRRD file format specification at:",
             "# http://teem.sourceforge.net/nrrd/format.html",
             f"type: {'unsigned char' if dtype.itemsize == 1 else 'unsigned short'}"]
    if n_layers > 1:
        lines += ["dimension: 4", "space: left-posterior-superior", f"sizes: {n_layers} {sizes}",
                  f"space directions: none {axes}", "kinds: list domain domain domain"]
    else:
        lines += ["dimension: 3", "space: left-posterior-superior", f"sizes: {sizes}",
                  f"space directions: {axes}", "kinds: domain domain domain"]
    if dtype.itemsize > 1:
        lines.append("endian: little")
    lines += ["encoding: gzip", f"space origin: {_vec(reference.GetOrigin())}"]

    # Slicer's "Reference image geometry": IJK-to-RAS matrix row by row, then the extent.
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = np.diag([-1.0, -1.0, 1.0]) @ columns
    ijk_to_ras[:3, 3] = np.asarray(reference.GetOrigin()) * [-1.0, -1.0, 1.0]
    extent = [v for n in shape[::-1] for v in (0, n - 1)]
    geometry = "".join(f"{v:.17g};" for v in ijk_to_ras.ravel()) + "".join(f"{v};" for v in extent)
    fields: Dict[str, str] = {
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ConversionParameters": (
            f"Reference image geometry|{geometry}|Image geometry description string determining "
            "the geometry of the labelmap that is created in course of conversion.&"),
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
        "ITK_FileNotes": f"{MARK} segmentation",
    }
    used_ids: set = set()
    for i, (mask, layer, label) in enumerate(zip(masks, layers, labels)):
        segment_id = mask.key
        while segment_id in used_ids:
            segment_id += "_"
        used_ids.add(segment_id)
        box = mask.bbox()
        extent_str = ("0 -1 0 -1 0 -1" if box is None else
                      " ".join(f"{box[a].start} {box[a].stop - 1}" for a in (2, 1, 0)))
        tags = f"TerminologyEntry:{mask.terminology}|" if mask.terminology else ""
        fields.update({
            f"Segment{i}_Color": " ".join(f"{c / 255:.6g}" for c in mask.color),
            f"Segment{i}_ColorAutoGenerated": "0",
            f"Segment{i}_Extent": extent_str,
            f"Segment{i}_ID": segment_id,
            f"Segment{i}_LabelValue": str(label),
            f"Segment{i}_Layer": str(layer),
            f"Segment{i}_Name": mask.name,
            f"Segment{i}_NameAutoGenerated": "0",
            f"Segment{i}_Tags": tags,
        })
    lines += [f"{k}:={_nrrd_value(v)}" for k, v in fields.items()]
    return "\n".join(lines) + "\n\n"


def read_seg_nrrd(path: PathLike) -> Tuple[List[TargetMask], sitk.Image]:
    """Read a .seg.nrrd (ours, or Slicer's) into masks and a reference geometry image.

    The reference is a zero UInt8 image on the stored grid (for our files: the input grid).
    ``TargetMask.key`` is the segment ID.
    """
    from ..postprocess.to_input_grid import reference_geometry

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise HermesError(f"{path}: cannot read the segmentation file (missing or corrupt); "
                          "check the path or segment again") from None
    meta = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    voxels = sitk.GetArrayViewFromImage(image)  # [z, y, x] or [z, y, x, layer]
    if voxels.ndim == 3:
        voxels = voxels[..., np.newaxis]
    offset = [int(v) for v in meta.get("Segmentation_ReferenceImageExtentOffset", "0 0 0").split()]
    masks = []
    i = 0
    while f"Segment{i}_ID" in meta:
        fields = {k[len(f"Segment{i}_"):]: v for k, v in meta.items() if k.startswith(f"Segment{i}_")}
        field = fields.get
        layer = int(field("Layer", "0"))
        label = int(field("LabelValue", "1"))
        extent = [int(v) for v in field("Extent", "0 -1 0 -1 0 -1").split()]
        lo = [extent[2 * a] - offset[a] for a in (2, 1, 0)]      # zyx, file index
        hi = [extent[2 * a + 1] - offset[a] + 1 for a in (2, 1, 0)]
        if all(stop > start for start, stop in zip(lo, hi)):
            crop = voxels[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2], layer] == label
        else:
            crop, lo = np.zeros((0, 0, 0), dtype=bool), [0, 0, 0]
        red, green, blue = (int(round(float(c) * 255)) for c in field("Color", "0.5 0.5 0.5").split()[:3])
        terminology = next((t.split(":", 1)[1] for t in field("Tags", "").split("|")
                            if t.startswith("TerminologyEntry:")), "")
        masks.append(TargetMask(key=field("ID", ""), name=field("Name", field("ID", "")), color=(red, green, blue),
                                terminology=terminology, offset_zyx=(lo[0], lo[1], lo[2]), array=crop))
        i += 1
    if voxels.shape[-1] > 1:
        image = sitk.VectorIndexSelectionCast(image, 0)
    return masks, reference_geometry(image)


class SegNrrdWriter(SegmentationWriter):
    """Slicer's .seg.nrrd: one segment per target, overlaps kept (``overlap_policy`` is not needed)."""

    name = "seg-nrrd"
    suffix = ".seg.nrrd"
    description = "Slicer, overlapping targets kept"

    def write(self, path: Path, masks: Sequence[TargetMask], reference: sitk.Image, *,
              overlap_policy: str = "priority") -> None:
        write_seg_nrrd(path, masks, reference)
