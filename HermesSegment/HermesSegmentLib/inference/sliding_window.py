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
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import HermesError
from .control import CancelToken, ProgressCallback, report
from .device import autocast, compute_dtype, is_out_of_memory
from .windows import blending_weights, padding_for, window_starts

log = logging.getLogger(__name__)


class _Slab:
    """Float32 accumulators for the z-planes [base, base + depth) of the padded volume."""

    def __init__(self, tasks: int, depth: int, height: int, width: int, device: torch.device) -> None:
        self.logits = torch.zeros((tasks, depth, height, width), dtype=torch.float32, device=device)
        self.weights = torch.zeros((depth, height, width), dtype=torch.float32, device=device)
        self.base = 0

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


def predict_volume(
    network: torch.nn.Module,
    volume: np.ndarray,
    task_indices: Sequence[int],
    modality_slot: int,
    *,
    window_zyx: Sequence[int],
    overlap: float = 0.5,
    blending: str = "gaussian",
    batch_size: int = 2,
    device: torch.device | str = "cpu",
    precision: str = "auto",
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
) -> np.ndarray:
    """Per-task probabilities over a normalised model-space volume.

    ``volume``: float32 (D, H, W). ``task_indices``: the model's task rows to query (only these
    tokens enter the network). Returns uint8 (T, D, H, W) = round(255 x sigmoid(blended logits)).
    Axes shorter than the window are padded symmetrically with the volume's minimum (air).
    On a CUDA out-of-memory error the batch is halved, then the run moves to the CPU with a
    warning. The network is moved to ``device`` and put in eval mode; on the CPU its weights are
    switched to the channels-last 3D layout, which oneDNN convolves about 25% faster (same values).
    ``precision``: ``auto`` (mixed precision where the hardware multiplies it natively),
    ``float32`` or ``bfloat16``; see :func:`inference.device.compute_dtype`. Blending and the
    accumulators are float32 whatever the precision.
    """
    if not 0 <= overlap < 1:
        raise HermesError(f"overlap must be in [0, 1), got {overlap}")
    if volume.ndim != 3:
        raise HermesError(f"expected a 3D volume, got shape {volume.shape}")
    device = torch.device(device)
    dtype = compute_dtype(device, precision)
    window = tuple(int(w) for w in window_zyx)
    pads = padding_for(volume.shape, window)
    padded = np.pad(volume, pads, mode="constant", constant_values=float(volume.min())) if any(sum(p) for p in pads) else volume
    padded = np.ascontiguousarray(padded, dtype=np.float32)
    corners = window_starts(padded.shape, window, overlap)
    tasks = torch.as_tensor(list(task_indices), dtype=torch.long)
    modality = torch.tensor([[modality_slot]], dtype=torch.long)

    network = _prepare(network, device)
    weights = torch.from_numpy(blending_weights(window, blending)).to(device)
    slab = _Slab(len(task_indices), window[0], padded.shape[1], padded.shape[2], device)
    result = np.zeros((len(task_indices), *volume.shape), dtype=np.uint8)
    (z_pad, _), (y_pad, _), (x_pad, _) = pads

    def emit(block: np.ndarray) -> None:
        """Copy finished padded planes into the unpadded result."""
        start = slab.base - block.shape[1]  # planes [start, slab.base) of the padded volume
        lo, hi = max(start, z_pad), min(slab.base, z_pad + volume.shape[0])
        if hi > lo:
            result[:, lo - z_pad:hi - z_pad] = block[:, lo - start:hi - start, y_pad:y_pad + volume.shape[1],
                                                     x_pad:x_pad + volume.shape[2]]

    done = 0
    report(progress, "inference", 0.0, f"{len(corners)} windows")
    with torch.inference_mode():
        while done < len(corners):
            if cancel is not None:
                cancel.raise_if_cancelled()
            batch = corners[done:done + batch_size]
            try:
                logits = _forward(network, padded, batch, window, tasks, modality, device, dtype)
            except RuntimeError as error:
                if not (device.type == "cuda" and is_out_of_memory(error)):
                    raise
                torch.cuda.empty_cache()
                if batch_size > 1:
                    batch_size //= 2
                    log.warning("GPU out of memory: retrying with %d window(s) per batch", batch_size)
                else:
                    log.warning("GPU out of memory even with one window: continuing on the CPU (slower)")
                    device = torch.device("cpu")
                    dtype = compute_dtype(device, precision)
                    network = _prepare(network, device)
                    weights = weights.to(device)
                    slab.to(device)
                continue
            for corner, window_logits in zip(batch, logits):
                if corner[0] > slab.base:
                    emit(slab.release(corner[0] - slab.base))
                slab.add(window_logits, weights, corner)
            done += len(batch)
            report(progress, "inference", done / len(corners), f"window {done}/{len(corners)}")
    emit(slab.release(padded.shape[0] - slab.base))
    return result


def _prepare(network: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    network = network.to(device).eval()
    return network.to(memory_format=torch.channels_last_3d) if device.type == "cpu" else network


def _forward(
    network: torch.nn.Module, padded: np.ndarray, corners: Sequence[tuple[int, int, int]], window: tuple[int, int, int],
    tasks: torch.Tensor, modality: torch.Tensor, device: torch.device, dtype: Optional[torch.dtype],
) -> torch.Tensor:
    """Logits (B, T, *window) in float32 for a batch of windows."""
    dz, dy, dx = window
    crops = [torch.from_numpy(padded[z:z + dz, y:y + dy, x:x + dx]) for z, y, x in corners]
    images = torch.stack(crops)[:, None].to(device, non_blocking=True)
    if device.type == "cpu":
        images = images.contiguous(memory_format=torch.channels_last_3d)
    count = len(corners)
    with autocast(device, dtype):
        logits, _ = network(images, tasks.expand(count, -1).to(device), modality.expand(count, -1).to(device))
    return logits.float()
