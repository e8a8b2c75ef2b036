"""Render the extension's screenshot: the demo model's segmentation of the phantom, VTK offscreen.

    python tools/render_screenshot.py demo-output/phantom.nii.gz demo-output/phantom.seg.nrrd \
        Resources/Screenshots/HermesSegment-phantom.png

Left: a 3D view of every segment's surface over a coronal slice of the image; right: the three
orthogonal slices with outlines (demo.render_overview). Used until a screenshot of Slicer exists.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HermesSegment"))

from HermesSegmentLib.demo import render_overview, to_lps
from HermesSegmentLib.writers import read_seg_nrrd


def render_3d(image: sitk.Image, masks, path: Path, size=(900, 900)) -> None:
    import vtk
    from vtk.util import numpy_support

    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.05, 0.05, 0.08)
    shape = image.GetSize()[::-1]
    _, oriented, spacing_zyx = to_lps(image, {m.key: m.full(shape) for m in masks})
    for mask in masks:
        full = oriented[mask.key].astype(np.uint8)  # [z, y, x] with x = left, y = posterior, z = superior
        data = vtk.vtkImageData()
        data.SetDimensions(*full.shape[::-1])
        data.SetSpacing(*spacing_zyx[::-1])
        data.GetPointData().SetScalars(numpy_support.numpy_to_vtk(full.ravel(), deep=True))
        surface = vtk.vtkFlyingEdges3D()
        surface.SetInputData(data)
        surface.SetValue(0, 0.5)
        smooth = vtk.vtkWindowedSincPolyDataFilter()
        smooth.SetInputConnection(surface.GetOutputPort())
        smooth.SetNumberOfIterations(15)
        smooth.SetPassBand(0.05)
        smooth.NormalizeCoordinatesOn()
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputConnection(smooth.GetOutputPort())
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        mapper.ScalarVisibilityOff()
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*(c / 255.0 for c in mask.color))
        actor.GetProperty().SetOpacity(0.35 if mask.key.startswith("lung") else 1.0)
        renderer.AddActor(actor)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.AddRenderer(renderer)
    window.SetSize(*size)
    camera = renderer.GetActiveCamera()
    # Array axes are LPS: view from the patient's front (-y), superior up (+z).
    renderer.ResetCamera()
    focal = camera.GetFocalPoint()
    camera.SetPosition(focal[0], focal[1] - 1500, focal[2])
    camera.SetViewUp(0, 0, 1)  # from the front, superior up: the patient's left is on the right
    renderer.ResetCamera()
    camera.Zoom(1.3)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()


def main() -> int:
    image_path, seg_path, out = (Path(a) for a in sys.argv[1:4])
    image = sitk.ReadImage(str(image_path))
    masks, _ = read_seg_nrrd(seg_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        left, right = Path(tmp) / "3d.png", Path(tmp) / "slices.png"
        render_3d(image, masks, left)
        shape = image.GetSize()[::-1]
        render_overview(image, {m.key: m.full(shape) for m in masks}, {m.key: m.color for m in masks}, right,
                        "hermes-demo on a CT phantom (demo model; not for clinical use)")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        a, b = plt.imread(left), plt.imread(right)
        figure, axes = plt.subplots(1, 2, figsize=(16, 6), gridspec_kw={"width_ratios": [a.shape[1] / a.shape[0],
                                                                                         b.shape[1] / b.shape[0]]},
                                    facecolor="black")
        for axis, picture in zip(axes, (a, b)):
            axis.imshow(picture)
            axis.axis("off")
        figure.savefig(out, dpi=100, facecolor="black", bbox_inches="tight")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
