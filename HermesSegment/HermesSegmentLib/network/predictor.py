"""The Hermes network as a sliding-window predictor: a batch of windows in, one logit map per task out."""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ..inference.device import autocast, compute_dtype


class HermesPredictor:
    """``predictor(windows)``: windows (B, 1, D, H, W) float32 -> logits (B, T, D, H, W) float32, one
    per task of ``task_indices`` (rows of the model's task priors), all for ``modality_slot``;
    with ``outputs`` (positions in ``task_indices``), only those tasks' logits, in that order.

    Every voxel attends to all the queried task priors, so a task's logits depend on which other
    tasks are queried with it: the pipeline queries a fixed set per model and modality (every task
    it offers there) and picks the asked ones with ``outputs``.

    This is what :func:`inference.predict_volume` calls, as MONAI's ``sliding_window_inference``
    calls its predictor. ``precision``: ``auto``, ``float32`` or ``bfloat16``
    (:func:`inference.device.compute_dtype`); logits come back in float32 whatever it is.
    :meth:`to` moves the network (in eval mode; on the CPU in the channels-last 3D layout, which
    oneDNN convolves about 25% faster, same values) and returns the predictor.
    """

    def __init__(self, network: torch.nn.Module, task_indices: Sequence[int], modality_slot: int, *,
                 precision: str = "auto", device: torch.device | str = "cpu",
                 outputs: Optional[Sequence[int]] = None) -> None:
        self.network = network
        self.task_indices = list(task_indices)
        self.outputs = list(range(len(self.task_indices))) if outputs is None else list(outputs)
        self.modality_slot = int(modality_slot)
        self.precision = precision
        self.device = torch.device(device)
        self.dtype: Optional[torch.dtype] = compute_dtype(self.device, precision)

    def to(self, device: torch.device | str) -> HermesPredictor:
        self.device = torch.device(device)
        self.dtype = compute_dtype(self.device, self.precision)
        network = self.network.to(self.device).eval()
        if self.device.type == "cpu":  # (torch's type stubs lack Module.to's documented memory_format)
            network = network.to(memory_format=torch.channels_last_3d)  # type: ignore[call-overload]
        self.network = network
        return self

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            windows = windows.contiguous(memory_format=torch.channels_last_3d)
        count = windows.shape[0]
        tasks = torch.as_tensor(self.task_indices, dtype=torch.long).expand(count, -1).to(self.device)
        modality = torch.tensor([[self.modality_slot]], dtype=torch.long).expand(count, -1).to(self.device)
        with autocast(self.device, self.dtype):
            logits, _ = self.network(windows, tasks, modality)
        if self.outputs != list(range(len(self.task_indices))):
            logits = logits[:, self.outputs]
        return logits.float()
