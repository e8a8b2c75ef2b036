"""How long a run will take on this computer, before it starts: the number of windows the input needs
times a per-window time measured here once per model, device and machine (cached).

The panel asks before a long run (CPU, large model) and suggests a GPU; the user can go on. The
measurement runs in a background process (``python -m HermesSegmentLib.slicer.estimate MODEL
--device DEVICE``): the model's sliding window over exactly one window of zeros, once to warm up,
once timed -- the same code path as a run, so the time includes what a window really costs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import HermesError

#: A run expected to last longer than this asks first.
ASK_ABOVE_SECONDS = 120.0


def cache_file() -> Path:
    from ..models.catalog import user_home

    return user_home() / "window-seconds.json"


def cache_key(package: str | Path, device: str) -> str:
    """Per model file (SHA-256), device and machine: a copied user folder does not carry wrong times."""
    from ..models import sha256_file

    return f"{sha256_file(package)}|{device}|{platform.node()}|{platform.processor() or platform.machine()}"


def cached_window_seconds(package: str | Path, device: str) -> float | None:
    try:
        return float(json.loads(cache_file().read_text(encoding="utf-8"))[cache_key(package, device)])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _store(key: str, seconds: float) -> None:
    path = cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        table = {}
    table[key] = seconds
    fd, temp = tempfile.mkstemp(prefix=".window-seconds.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as stream:
        json.dump(table, stream, indent=1)
    os.replace(temp, path)


def window_count(shape_zyx: Sequence[int], spacing_zyx_mm: Sequence[float], manifest: dict[str, Any],
                 overlap: float) -> int:
    """Windows the sliding window runs on an image of this size (an upper bound: the body crop and the
    skipped empty windows only lower it). Counted as :func:`inference.windows.axis_starts` lays them."""
    model_spacing = manifest["input"]["spacing_zyx_mm"]
    window = manifest["input"]["window_size_zyx"]
    count = 1
    for size, spacing, target, length in zip(shape_zyx, spacing_zyx_mm, model_spacing, window):
        voxels = max(1, round(size * spacing / target))
        step = max(1, int(length * (1 - overlap)))
        count *= 1 if voxels <= length else math.ceil((voxels - length) / step) + 1
    return count


#: Hermes-R's width; the bundled demo model is far smaller.
LARGE_BASE_CHANNELS = 32


def is_slow(manifest: dict[str, Any], device: str) -> bool:
    """Only a large model off a GPU is worth a question (the demo model runs in seconds anywhere)."""
    return device not in ("cuda", "mps") and manifest["architecture"].get("base_channels", 32) >= LARGE_BASE_CHANNELS


def question(windows: int, window_seconds: float) -> str | None:
    """What the panel asks before the run, or None when the run is short."""
    expected = windows * window_seconds
    if expected <= ASK_ABOVE_SECONDS:
        return None
    return (f"This run is expected to take about {expected / 60:.0f} minutes on this computer "
            f"({windows} windows of {window_seconds:.1f} s each, measured here). An NVIDIA GPU does it in "
            "seconds to a few minutes (choose it under Advanced, or use a computer that has one). Start anyway?")


def measure(model: str | Path, device: str) -> float:
    """Seconds per window of ``model`` on ``device`` (one warm-up window, one timed), cached."""
    import numpy as np

    from ..inference import predict_volume, select_device
    from ..models import load, resolve

    package = resolve(model)
    torch_device = select_device(device)
    loaded = load(package, device=str(torch_device))
    window = loaded.manifest["input"]["window_size_zyx"]
    zeros = np.zeros(window, np.float32)
    task, slot = loaded.manifest["tasks"][0]["index"], loaded.manifest["modalities"][0]["slot"]
    predictor = loaded.predictor([task], slot)
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        predict_volume(predictor, zeros, window_zyx=window, batch_size=1, device=torch_device)
        timings.append(time.perf_counter() - started)
    _store(cache_key(package, device), timings[-1])
    return timings[-1]


def measure_command(model: str | Path, device: str, python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "HermesSegmentLib.slicer.estimate", str(model), "--device", device]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="measure and cache the per-window time of a model here")
    parser.add_argument("model")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    try:
        print(json.dumps({"window_seconds": measure(args.model, args.device)}), flush=True)
    except HermesError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
