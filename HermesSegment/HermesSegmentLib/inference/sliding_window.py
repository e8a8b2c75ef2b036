"""Sliding-window inference over a model-space volume, with bounded memory.

Windows are visited z-major and blended (Gaussian or uniform weights) in logit space, as MONAI
does. Only a slab of the volume one window deep is held in float32 at any time: once no later
window can touch a z-plane, that plane is turned into probabilities (sigmoid, one per task),
quantised to uint8 and written to the output. Peak memory is therefore

    tasks x window_depth x height x width x 4 bytes   (the float32 slab)
  + tasks x depth x height x width x 1 byte          (the uint8 result)

instead of tasks x depth x height x width x 4 bytes for a whole-volume float accumulator.
Quantising probabilities to 1/255 costs nothing measurable (see docs/architecture.md).
"""

from __future__ import annotations

import logging
from typing import Optional, Protocol, Sequence

import numpy as np
import torch

from ..errors import HermesError
from .control import CancelToken, ProgressCallback, report
from .device import is_out_of_memory
from .windows import blending_weights, padding_for, window_starts

log = logging.getLogger(__name__)


class Predictor(Protocol):
    """What :func:`predict_volume` runs on each batch of windows (as MONAI's sliding window does).

    ``predictor(windows)``: (B, 1, D, H, W) float32 on the predictor's device -> logits
    (B, T, D, H, W), float32. ``predictor.to(device)`` moves it and returns the predictor to use
    (a torch module's ``to`` does both). ``network.predictor.HermesPredictor`` is the Hermes one.
    """

    def __call__(self, windows: torch.Tensor) -> torch.Tensor: ...

    def to(self, device: torch.device) -> Predictor: ...


class _Slab:
    """Float32 accumulators for the z-planes [base, base + depth) of the padded volume, and the uint8
    result (T, D, H, W) of the unpadded volume that finished planes are written to."""

    def __init__(self, tasks: int, depth: int, padded_shape: Sequence[int], pads: Sequence[tuple[int, int]],
                 volume_shape: Sequence[int], device: torch.device) -> None:
        _, height, width = padded_shape
        self.logits = torch.zeros((tasks, depth, height, width), dtype=torch.float32, device=device)
        self.weights = torch.zeros((depth, height, width), dtype=torch.float32, device=device)
        self.base = 0
        self.pads, self.volume_shape = pads, tuple(volume_shape)
        self.result = np.zeros((tasks, *volume_shape), dtype=np.uint8)

    def to(self, device: torch.device) -> None:
        self.logits, self.weights = self.logits.to(device), self.weights.to(device)

    def add(self, logits: torch.Tensor, weights: torch.Tensor, corner: tuple[int, int, int]) -> None:
        """Accumulate one window's logits (T, dz, dy, dx), which are scaled in place."""
        z, y, x = corner
        dz, dy, dx = weights.shape
        z -= self.base
        self.logits[:, z:z + dz, y:y + dy, x:x + dx] += logits.mul_(weights)
        self.weights[z:z + dz, y:y + dy, x:x + dx] += weights

    def release(self, planes: int) -> np.ndarray:
        """Finish the first ``planes`` planes: uint8 probabilities (T, planes, H, W); shift the rest.

        Works in place (those planes are recycled anyway) and shifts plane by plane, so that no
        slab-sized temporary is ever allocated.
        """
        finished = self.logits[:, :planes]
        finished.div_(self.weights[:planes]).sigmoid_().mul_(255.0).round_()
        quantised = finished.to(torch.uint8).cpu().numpy()
        depth = self.weights.shape[0]
        for plane in range(depth - planes):
            self.logits[:, plane] = self.logits[:, plane + planes]
            self.weights[plane] = self.weights[plane + planes]
        self.logits[:, depth - planes:] = 0
        self.weights[depth - planes:] = 0
        self.base += planes
        return quantised

    def flush(self, planes: int) -> None:
        """Finish the first ``planes`` planes and copy them, without their padding, into the result."""
        block = self.release(planes)
        start = self.base - planes  # planes [start, base) of the padded volume
        (z_pad, _), (y_pad, _), (x_pad, _) = self.pads
        depth, height, width = self.volume_shape
        lo, hi = max(start, z_pad), min(self.base, z_pad + depth)
        if hi > lo:
            self.result[:, lo - z_pad:hi - z_pad] = block[:, lo - start:hi - start, y_pad:y_pad + height,
                                                          x_pad:x_pad + width]


def predict_volume(
    predictor: Predictor,
    volume: np.ndarray,
    *,
    window_zyx: Sequence[int],
    overlap: float = 0.5,
    blending: str = "gaussian",
    batch_size: int = 2,
    device: torch.device | str = "cpu",
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> np.ndarray:
    """Probabilities of every output of ``predictor`` over a normalised model-space volume.

    ``volume``: float32 (D, H, W). Returns uint8 (T, D, H, W) = round(255 x sigmoid(blended
    logits)), T the predictor's outputs. Axes shorter than the window are padded symmetrically with
    the volume's minimum (air). The predictor is moved to ``device``; when a GPU (CUDA, MPS) runs out
    of memory the batch is halved, then the predictor moves to the CPU with a warning (a
    ``HermesPredictor`` then tells where the run finished: its ``device``). Blending and the
    accumulators are float32.
    """
    if not 0 <= overlap < 1:
        raise HermesError(f"overlap must be in [0, 1), got {overlap}")
    device = torch.device(device)
    window = (int(window_zyx[0]), int(window_zyx[1]), int(window_zyx[2]))
    padded, pads = _padded(volume, window)
    corners = window_starts(padded.shape, window, overlap)

    predictor = predictor.to(device)
    weights = torch.from_numpy(blending_weights(window, blending)).to(device)
    slab: Optional[_Slab] = None  # made when the first logits tell how many outputs there are
    done = 0
    report(progress, "inference", 0.0, f"{len(corners)} windows")
    with torch.inference_mode():
        while done < len(corners):
            if cancel is not None:
                cancel.raise_if_cancelled()
            batch = corners[done:done + batch_size]
            try:
                logits = predictor(_windows(padded, batch, window, device))
            except RuntimeError as error:
                moved, batch_size = _after_out_of_memory(error, device, batch_size)
                if moved != device:
                    device, predictor = moved, predictor.to(moved)
                    weights = torch.from_numpy(blending_weights(window, blending))
                    if slab is not None:
                        slab.to(device)
                continue
            if slab is None:
                slab = _Slab(logits.shape[1], window[0], padded.shape, pads, volume.shape, device)
            for corner, window_logits in zip(batch, logits):
                if corner[0] > slab.base:
                    slab.flush(corner[0] - slab.base)
                slab.add(window_logits, weights, corner)
            done += len(batch)
            report(progress, "inference", done / len(corners), f"window {done}/{len(corners)}")
        assert slab is not None, "a volume has at least one window"
        slab.flush(padded.shape[0] - slab.base)
    return slab.result


def _after_out_of_memory(error: RuntimeError, device: torch.device, batch_size: int) -> tuple[torch.device, int]:
    """(device, batch size) to go on with after ``error``: half the batch, then the CPU, when a GPU
    ran out of memory; any other error is raised again."""
    if device.type == "cpu" or not is_out_of_memory(error):
        raise error
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if batch_size > 1:
        log.warning("GPU out of memory: retrying with %d window(s) per batch", batch_size // 2)
        return device, batch_size // 2
    log.warning("GPU out of memory even with one window: continuing on the CPU (slower)")
    return torch.device("cpu"), batch_size


def _padded(volume: np.ndarray, window: tuple[int, int, int]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """(``volume`` as contiguous float32, padded with its minimum (air) to at least ``window`` on
    every axis, the (before, after) padding per axis)."""
    if volume.ndim != 3:
        raise HermesError(f"expected a 3D volume, got shape {volume.shape}")
    pads = padding_for(volume.shape, window)
    if any(before or after for before, after in pads):
        volume = np.pad(volume, pads, mode="constant", constant_values=float(volume.min()))
    return np.ascontiguousarray(volume, dtype=np.float32), pads


def _windows(padded: np.ndarray, corners: Sequence[tuple[int, int, int]], window: tuple[int, int, int],
             device: torch.device) -> torch.Tensor:
    """A batch of windows (B, 1, *window) cut from the padded volume, on ``device``."""
    dz, dy, dx = window
    crops = [torch.from_numpy(padded[z:z + dz, y:y + dy, x:x + dx]) for z, y, x in corners]
    return torch.stack(crops)[:, None].to(device, non_blocking=True)
