"""How long a run will take on this computer, before it starts: the windows the input needs times a
per-window time measured here once per model, device, backend and precision (cached).

Windows: counted on the input's model-space grid the way the sliding window lays them
(``inference.windows``, ``inference.window_plan``). A run near the asked targets (the default,
``SegmentOptions.target_windows``) needs at least the coverage windows and at most the whole lattice:
which windows lie near the targets is known only once the coverage pass has run (one kidney needs
half the lattice of an abdominal CT, six abdominal organs nearly all of it; docs/benchmarks.md), so
the estimate is a range. The body crop only lowers both ends.

Per-window time: ``python -m HermesSegmentLib.slicer.estimate --modality M [segment options]`` in a
background process runs the run's own predictor (``pipeline.segment.window_predictor``: the same
task query, backend, precision and batch size) on a batch of empty windows, once to warm up (and, for
OpenVINO, to convert the model), once timed.

The panel asks before a long run (a large model off a GPU) and suggests a GPU; the user can go on.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import HermesError
from ..pipeline.options import SegmentOptions, add_arguments, from_args

#: A run expected to last longer than this (at the most windows it may need) asks first.
ASK_ABOVE_SECONDS = 120.0
#: Hermes-R's width; the bundled demo model is far smaller.
LARGE_BASE_CHANNELS = 32


def cache_file() -> Path:
    from ..models.catalog import user_home

    return user_home() / "window-seconds.json"


def cache_key(options: SegmentOptions) -> str:
    """Per model file (SHA-256), the options that change a window's time, and machine: a copied user
    folder does not carry wrong times, and installing OpenVINO (``backend auto``) measures again."""
    from ..models import resolve, sha256_file

    if not isinstance(options.model, (str, Path)):
        raise TypeError("the model must be named by its catalog name or path")
    openvino = importlib.util.find_spec("openvino") is not None
    return "|".join((sha256_file(resolve(options.model)), options.device, options.backend, options.precision,
                     f"batch {options.batch_size or 'auto'}", f"openvino {openvino}", platform.node(),
                     platform.processor() or platform.machine()))


def cached_window_seconds(options: SegmentOptions) -> float | None:
    """The measured seconds per window for ``options`` on this machine, None if not measured yet."""
    try:
        return float(json.loads(cache_file().read_text(encoding="utf-8"))[cache_key(options)])
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


def model_grid_zyx(size_xyz: Sequence[int], index_to_lps: Any, manifest: dict[str, Any]) -> tuple[int, int, int]:
    """Voxels (z, y, x) of the input's model-space grid before the body crop, from its header only:
    ``size_xyz`` voxels, ``index_to_lps`` the (3, 4) [direction x spacing | origin] matrix
    (``preprocess.model_space.model_grid_size``, what the preprocessing resamples to)."""
    import numpy as np

    from ..preprocess.model_space import edge_corners, model_grid_size

    spacing_xyz = np.asarray(manifest["input"]["spacing_zyx_mm"], dtype=float)[::-1]
    x, y, z = (int(n) for n in model_grid_size(edge_corners(size_xyz, np.asarray(index_to_lps, float)), spacing_xyz))
    return z, y, x


@dataclass(frozen=True)
class WindowCount:
    """Windows a run needs: at least ``fewest`` (the coverage pass), at most ``most`` (the lattice)."""

    fewest: int
    most: int


def window_count(grid_zyx: Sequence[int], manifest: dict[str, Any], options: SegmentOptions) -> WindowCount:
    """Windows of a run of ``options`` on a model-space grid of ``grid_zyx`` voxels (before the body
    crop, which only lowers the counts), laid as ``inference.predict_volume`` lays them."""
    from ..inference.window_plan import covering_corners
    from ..inference.windows import window_starts

    window = [int(w) for w in manifest["input"]["window_size_zyx"]]
    padded = [max(int(n), w) for n, w in zip(grid_zyx, window)]  # short axes are padded to a window
    overlap = options.window_overlap
    lattice = len(window_starts(padded, window, overlap))
    fewest = len(covering_corners(padded, window, overlap)) if options.target_windows else lattice
    return WindowCount(fewest, lattice)


def is_slow(manifest: dict[str, Any], device: str) -> bool:
    """Only a large model off a GPU is worth a question (the demo model runs in seconds anywhere)."""
    return device not in ("cuda", "mps") and manifest["architecture"].get("base_channels", 32) >= LARGE_BASE_CHANNELS


@dataclass(frozen=True)
class Estimate:
    """The expected duration of a run's network: ``windows`` times ``window_seconds`` (measured here)."""

    windows: WindowCount
    window_seconds: float

    @property
    def most_seconds(self) -> float:
        return self.windows.most * self.window_seconds

    def describe(self) -> str:
        """E.g. ``about 5-16 minutes (36 to 112 windows of 8.7 s each, measured on this computer; ...)``."""
        (low, low_unit), (high, high_unit) = (_duration(n * self.window_seconds)
                                              for n in (self.windows.fewest, self.windows.most))
        if self.windows.fewest == self.windows.most:
            return f"about {high} {high_unit} ({self.windows.most} windows of {self.window_seconds:.1f} s each, " \
                   "measured on this computer)"
        span = f"{low}-{high} {high_unit}" if low_unit == high_unit else f"{low} {low_unit} to {high} {high_unit}"
        return (f"about {span} ({self.windows.fewest} to {self.windows.most} windows of {self.window_seconds:.1f} s "
                "each, measured on this computer; the fewer, the smaller the asked targets)")


def _duration(seconds: float) -> tuple[str, str]:
    """(number, unit) for a duration: seconds up to 90 s, minutes up to 90 minutes, then hours."""
    if seconds < 90:
        return f"{seconds:.0f}", "s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f}", "minutes"
    return f"{seconds / 3600:.1f}", "hours"


def question(expected: Estimate) -> str | None:
    """What the panel asks before the run, or None when even the most windows make a short run."""
    if expected.most_seconds <= ASK_ABOVE_SECONDS:
        return None
    return (f"This run is expected to take {expected.describe()}. An NVIDIA GPU does it in seconds to a few "
            "minutes (choose it under Advanced, or use a computer that has one). Start anyway?")


def measure(options: SegmentOptions, modality: str) -> float:
    """Seconds per window of a run of ``options`` on ``modality`` here (one warm-up batch, one timed), cached.

    Raises HermesError for an unknown model, modality or device (the CLI's one-line errors).
    """
    import torch

    from .. import vocabulary
    from ..inference import select_device
    from ..models import LoadedModel, load, resolve
    from ..pipeline.segment import window_predictor

    device = select_device(options.device)
    loaded = options.model if isinstance(options.model, LoadedModel) else load(resolve(options.model))
    key = vocabulary.modality(modality).key
    predictor, batch = window_predictor(loaded, key, loaded.query(key)[:1], options, device)
    predictor = predictor.to(device)
    windows = torch.zeros((batch, 1, *loaded.manifest["input"]["window_size_zyx"]), device=device)
    timings = []
    with torch.inference_mode():
        for _ in range(2):
            started = time.perf_counter()
            predictor(windows)
            if device.type == "cuda":
                torch.cuda.synchronize()
            timings.append((time.perf_counter() - started) / batch)
    _store(cache_key(options), timings[-1])
    return timings[-1]


def measure_command(options: SegmentOptions, modality: str, python: str | None = None) -> list[str]:
    """The background command that measures and caches the per-window time of a run of ``options``."""
    return [python or sys.executable, "-m", "HermesSegmentLib.slicer.estimate", "--modality", modality,
            *options.command_line()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="measure and cache the per-window time of a run here")
    parser.add_argument("--modality", required=True)
    add_arguments(parser)
    args = parser.parse_args(argv)
    options = from_args(args)
    try:
        seconds = measure(options, args.modality)
    except HermesError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps({"window_seconds": seconds}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
