"""Sliding-window inference over a model-space volume, with bounded memory.

Windows are visited z-major and blended (Gaussian or uniform weights) in logit space, as MONAI
does. Only a slab of the volume one window deep is held in float32 at any time: once no later
window can touch a z-plane, that plane is turned into probabilities (sigmoid, one per task),
quantised to uint8 and written to the output. Peak memory is therefore

    tasks x window_depth x height x width x 4 bytes   (the float32 slab)
  + tasks x depth x height x width x 1 byte          (the uint8 result)

instead of tasks x depth x height x width x 4 bytes for a whole-volume float accumulator.
Quantising probabilities to 1/255 costs nothing measurable (see docs/architecture.md).

With ``near_targets`` only the windows near what the predictor finds run (:mod:`.window_plan`):
a coverage pass first, whose logits are kept (up to ``KEEP_COVERAGE_BYTES``) and blended when
the sweep reaches them, so no window runs twice. Batches are always full (a short last batch is
padded with a copy of its last window): every window is computed by the same kernels whatever
windows share its batch, so a voxel's probability does not depend on which windows ran.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Optional, Protocol, Sequence

import numpy as np
import torch

from ..errors import HermesError
from .control import CancelToken, ProgressCallback, report
from .device import is_out_of_memory
from .window_plan import WindowPlan, corners_near, covering_corners
from .windows import blending_weights, padding_for, window_starts

log = logging.getLogger(__name__)

Corner = tuple[int, int, int]
# Coverage logits kept in memory for the sweep; beyond this, a needed coverage window runs again.
KEEP_COVERAGE_BYTES = 2 << 30


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
        finished.masked_fill_(self.weights[:planes] == 0, 0.0)  # no window ran there (near_targets)
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
        """Finish the first ``planes`` planes and copy them, without their padding, into the result.

        ``planes`` may exceed the slab's depth when only the windows near the targets run (a gap
        in z between them, or none after the last): no window reached the planes beyond the slab,
        which stay 0 in the result."""
        held = min(planes, self.weights.shape[0])
        block = self.release(held)
        start = self.base - held  # planes [start, base) of the padded volume
        (z_pad, _), (y_pad, _), (x_pad, _) = self.pads
        depth, height, width = self.volume_shape
        lo, hi = max(start, z_pad), min(self.base, z_pad + depth)
        if hi > lo:
            self.result[:, lo - z_pad:hi - z_pad] = block[:, lo - start:hi - start, y_pad:y_pad + height,
                                                          x_pad:x_pad + width]
        self.base += planes - held


def predict_volume(
    predictor: Predictor,
    volume: np.ndarray,
    *,
    window_zyx: Sequence[int],
    overlap: float = 0.5,
    blending: str = "gaussian",
    batch_size: int = 2,
    device: torch.device | str = "cpu",
    plan: Optional[WindowPlan] = None,
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
    ``plan``: :class:`WindowPlan`; with ``near_targets`` p, only the windows within an eighth of a
    window of a voxel where some output reaches p in the coverage pass run (voxels no window
    reached are 0); the plan then tells how many windows ran. None runs every window.
    """
    if not 0 <= overlap < 1:
        raise HermesError(f"overlap must be in [0, 1), got {overlap}")
    plan = plan or WindowPlan()
    near_targets = plan.near_targets
    if near_targets is not None and not 0 < near_targets < 1:
        raise HermesError(f"near_targets must be a probability in (0, 1), got {near_targets}")
    window = (int(window_zyx[0]), int(window_zyx[1]), int(window_zyx[2]))
    padded, pads = _padded(volume, window)
    corners = window_starts(padded.shape, window, overlap)
    device = torch.device(device)
    run = _Run(predictor.to(device), device, padded, pads, volume.shape, window, blending, batch_size, cancel)
    cover = covering_corners(padded.shape, window, overlap) if near_targets is not None else corners
    lattice = len(corners)
    with torch.inference_mode():
        if len(cover) < len(corners):
            assert near_targets is not None
            report(progress, "inference", 0.0, f"{len(cover)} windows to find the targets, of {lattice}")
            corners = run.find(cover, corners, math.log(near_targets / (1 - near_targets)), max(window) // 8,
                               lambda done: report(progress, "inference", done / lattice,
                                                   f"finding the targets: window {done}/{len(cover)}"))
        todo = [c for c in corners if c not in run.kept]
        total = run.windows + len(todo)
        report(progress, "inference", run.windows / max(total, 1), f"{len(corners)} windows")
        kept = sorted(run.kept)
        for start in range(0, len(todo), run.batch_size):
            batch = todo[start:start + run.batch_size]
            for corner, window_logits in zip(batch, run.compute(batch)):
                while kept and kept[0] < corner:  # blended in lattice order, as a full run does
                    run.add(kept[0], run.kept.pop(kept.pop(0)))
                run.add(corner, window_logits)
            report(progress, "inference", run.windows / total, f"window {run.windows}/{total}")
        for corner in kept:
            run.add(corner, run.kept.pop(corner))
        result = run.finish(padded.shape[0])
    plan.windows, plan.lattice = run.windows, lattice
    return result


class _Run:
    """One sliding-window run: the predictor on batches of windows (with the out-of-memory
    fallback), the slab it blends into, and the coverage logits kept for the sweep."""

    def __init__(self, predictor: Predictor, device: torch.device, padded: np.ndarray, pads: list[tuple[int, int]],
                 volume_shape: Sequence[int], window: tuple[int, int, int], blending: str, batch_size: int,
                 cancel: Optional[CancelToken]) -> None:
        self.predictor, self.padded, self.pads, self.volume_shape = predictor, padded, pads, volume_shape
        self.window, self.blending, self.batch_size, self.cancel = window, blending, batch_size, cancel
        self.asked_batch_size = batch_size
        self.device = device
        self.weights = torch.from_numpy(blending_weights(window, blending)).to(self.device)
        self.slab: Optional[_Slab] = None  # made when the first logits tell how many outputs there are
        self.kept: dict[Corner, torch.Tensor] = {}
        self.windows = 0  # windows computed (padding copies not counted)
        self.outputs = 0  # T, once a batch has run

    def compute(self, batch: Sequence[Corner]) -> torch.Tensor:
        """Logits (len(batch), T, *window) of ``batch`` (at most ``batch_size`` windows)."""
        if self.cancel is not None:
            self.cancel.raise_if_cancelled()
        full = list(batch) + [batch[-1]] * (self.batch_size - len(batch))
        try:
            logits = self.predictor(_windows(self.padded, full, self.window, self.device))[:len(batch)]
        except RuntimeError as error:
            moved, self.batch_size = _after_out_of_memory(error, self.device, self.batch_size)
            if moved != self.device:  # the CPU: the asked batch size again, so the CPU's masks come out
                self.device, self.predictor, self.batch_size = moved, self.predictor.to(moved), self.asked_batch_size
                self.weights = torch.from_numpy(blending_weights(self.window, self.blending)).to(moved)
                if self.slab is not None:
                    self.slab.to(moved)
            return torch.cat([self.compute(batch[i:i + self.batch_size])
                              for i in range(0, len(batch), self.batch_size)])
        self.windows += len(batch)
        self.outputs = logits.shape[1]
        return logits

    def add(self, corner: Corner, logits: torch.Tensor) -> None:
        """Blend one window's logits (T, *window); planes no later window reaches are finished."""
        logits = logits.to(self.device)
        if self.slab is None:
            self.slab = _Slab(logits.shape[0], self.window[0], self.padded.shape, self.pads, self.volume_shape,
                              self.device)
        if corner[0] > self.slab.base:
            self.slab.flush(corner[0] - self.slab.base)
        self.slab.add(logits, self.weights, corner)

    def finish(self, depth: int) -> np.ndarray:
        if self.slab is None:  # nothing found anywhere: every probability is 0
            return np.zeros((self.outputs, *self.volume_shape), dtype=np.uint8)
        self.slab.flush(depth - self.slab.base)
        return self.slab.result

    def find(self, cover: Sequence[Corner], corners: Sequence[Corner], cut: float, margin: int,
             progress: Callable[[int], None]) -> list[Corner]:
        """Run the coverage windows; return the corners near where some output's logit reaches
        ``cut``. The coverage logits are kept (up to KEEP_COVERAGE_BYTES), then those not needed
        are dropped."""
        found = np.zeros(self.padded.shape, dtype=bool)
        dz, dy, dx = self.window
        room = KEEP_COVERAGE_BYTES
        for start in range(0, len(cover), self.batch_size):
            batch = cover[start:start + self.batch_size]
            for (z, y, x), window_logits in zip(batch, self.compute(batch)):
                hits = (window_logits >= cut).any(dim=0)
                if bool(hits.any()):
                    found[z:z + dz, y:y + dy, x:x + dx] |= hits.cpu().numpy()
                size = window_logits.numel() * window_logits.element_size()
                if size <= room:  # whether it is needed is known once every coverage window ran
                    self.kept[(z, y, x)] = window_logits.cpu()
                    room -= size
            progress(self.windows)
        near = corners_near(found, corners, self.window, margin)
        needed = set(near)
        self.kept = {c: logits for c, logits in self.kept.items() if c in needed}
        return near


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
