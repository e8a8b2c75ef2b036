"""The extension's samples in Slicer's Sample Data module.

- a procedurally generated CT phantom (``HermesSegmentLib.phantoms``), the kind of image the demo
  model's torso targets were trained on. Without a URL it is generated locally on first use and
  cached; when :data:`PHANTOM_URL` is set, Sample Data downloads it and checks :data:`PHANTOM_SHA256`;
- each real scan bundled in ``Resources/SampleData`` (:mod:`HermesSegmentLib.bundled_samples`,
  e.g. a de-identified OpenKBP head-and-neck CT), loaded with its clinical contours as a second
  segmentation node to compare the model's result against.

:func:`register` is connected to ``slicer.app``'s ``startupCompleted()`` by the module.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

CATEGORY = "HermesSegment"
SAMPLE_NAME = "HermesPhantomCT"
PHANTOM_SEED = 0
PHANTOM_MODALITY = "CT"
#: Download address of a published copy of the phantom; ``None``: generate it locally.
PHANTOM_URL: str | None = None
#: SHA-256 of the file at :data:`PHANTOM_URL` (required when the URL is set).
PHANTOM_SHA256: str | None = None

ICON = Path(__file__).resolve().parents[2] / "Resources" / "Icons" / "HermesSegment.png"


def cache_dir() -> Path:
    """Folder for generated sample images (``$HERMES_SEGMENT_HOME/sample-data``)."""
    from ..models.catalog import user_home

    return user_home() / "sample-data"


def phantom_file(folder: Path | None = None, seed: int = PHANTOM_SEED, modality: str = PHANTOM_MODALITY) -> Path:
    """The phantom as an NRRD file, generated once and cached (written atomically)."""
    folder = folder or cache_dir()
    path = folder / f"HermesPhantom{modality}-seed{seed}.nrrd"
    if path.is_file():
        return path
    import SimpleITK as sitk

    from ..phantoms import generate_case

    image, _labelmap, _info = generate_case(seed, modality, orientation="LPS")
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".nrrd", dir=folder)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, True)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_phantom() -> Any:
    """Load the phantom into Slicer's scene and return its volume node (Slicer application only)."""
    import slicer

    return slicer.util.loadVolume(str(phantom_file()), {"name": SAMPLE_NAME})


def load_bundled_sample(name: str) -> tuple[Any, Any]:
    """Load a bundled real sample into Slicer's scene: (volume node, segmentation node of its clinical
    contours), both named after the sample (Slicer application only). The files are checked against
    their SHA-256 first (:func:`HermesSegmentLib.bundled_samples.bundled_sample`)."""
    import logging

    import slicer

    from ..bundled_samples import bundled_sample

    sample = bundled_sample(name)
    logging.info("%s: %s", sample.title, sample.attribution)
    volume = slicer.util.loadVolume(str(sample.image), {"name": name})
    contours = slicer.util.loadSegmentation(str(sample.contours))  # takes no properties (Slicer 5.2 to main)
    contours.SetName(f"{name} clinical contours")
    return volume, contours


def register() -> None:
    """Add the samples to Sample Data: the phantom, downloaded (with SHA-256) if a URL is set, else
    generated; and each bundled real scan with its contours."""
    import SampleData

    from ..bundled_samples import bundled_samples

    common = dict(category=CATEGORY, sampleName=SAMPLE_NAME, thumbnailFileName=str(ICON), nodeNames=SAMPLE_NAME)
    if PHANTOM_URL:
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            uris=PHANTOM_URL, fileNames=f"{SAMPLE_NAME}.nrrd", checksums=f"SHA256:{PHANTOM_SHA256}",
            loadFileType="VolumeFile", **common,
        )
    else:
        # Slicer's SampleDataSource checks len(uris) == len(fileNames) == ... even with a custom
        # downloader (uris=None raises TypeError, 5.6.2 to main): pass one placeholder of each.
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            uris=f"generated:{SAMPLE_NAME}", fileNames=f"{SAMPLE_NAME}.nrrd", loadFileType="VolumeFile",
            customDownloader=lambda _source: load_phantom(), **common
        )
    for entry in bundled_samples():
        name = entry["name"]
        # The files ship with the extension: a placeholder URI as for the generated phantom.
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=CATEGORY, sampleName=name, thumbnailFileName=str(ICON), nodeNames=name,
            uris=f"bundled:{name}", fileNames=entry["image"]["file"], loadFileType="VolumeFile",
            customDownloader=lambda _source, name=name: load_bundled_sample(name),
        )
