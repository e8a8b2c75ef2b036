"""The real scans bundled with the extension (``Resources/SampleData/samples.json``).

One description for every place that offers them: ``make demo --sample real-hn-ct`` and Slicer's
Sample Data module. Each file is checked against the SHA-256 recorded in ``samples.json`` before it
is used, so an altered or half-checked-out file is named instead of being segmented.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import HermesError

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "Resources" / "SampleData"


@dataclass(frozen=True)
class BundledSample:
    """A bundled scan and its contours: ``image`` (a CT file), ``contours`` (a .seg.nrrd with one segment
    per contoured target), ``modality`` (vocabulary key), ``title`` and ``attribution`` (its source
    and licence, shown wherever the sample is loaded)."""

    name: str
    title: str
    modality: str
    image: Path
    contours: Path
    attribution: str


def bundled_samples() -> list[dict[str, Any]]:
    """The entries of ``samples.json`` (unchecked), in file order."""
    return json.loads((SAMPLE_DATA / "samples.json").read_text(encoding="utf-8"))["samples"]


def bundled_sample(name: str) -> BundledSample:
    """The sample called ``name`` in ``samples.json``, its files checked against their SHA-256.

    Raises :class:`HermesError` for an unknown name or a missing or altered file.
    """
    described = {entry["name"]: entry for entry in bundled_samples()}
    if name not in described:
        raise HermesError(f"unknown sample {name!r}; bundled samples: {', '.join(described)}")
    entry = described[name]
    for part in (entry["image"], entry["contours"]):
        path = SAMPLE_DATA / part["file"]
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != part["sha256"]:
            raise HermesError(f"{path}: missing or altered (SHA-256 differs from samples.json); restore it from git")
    return BundledSample(name=name, title=entry["title"], modality=entry["modality"],
                         image=SAMPLE_DATA / entry["image"]["file"], contours=SAMPLE_DATA / entry["contours"]["file"],
                         attribution=entry["attribution"])
