"""The phantom sample in Slicer's Sample Data module.

No real scans can be shipped, so the sample is a procedurally generated CT phantom
(``HermesSegmentLib.phantoms``), the same kind of image the demo model was trained on.
Without a URL it is generated locally on first use and cached; when :data:`PHANTOM_URL` is set,
Sample Data downloads it and checks :data:`PHANTOM_SHA256`.

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


def register() -> None:
    """Add the phantom to Sample Data: downloaded (with SHA-256) if a URL is set, else generated."""
    import SampleData

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
