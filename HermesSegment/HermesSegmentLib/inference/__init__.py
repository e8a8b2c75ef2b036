"""Inference: sliding window over a predictor callable, blending, device policy, progress and cancel.

The sliding window knows nothing about the network: it calls a :class:`Predictor` on batches of
windows, as MONAI's ``sliding_window_inference`` does (the Hermes one: ``network.predictor``).
"""

from .control import CancelToken, ProgressCallback, report
from .device import (
    DEVICE_CHOICES,
    PRECISION_CHOICES,
    autocast,
    available_memory_gb,
    choose_batch_size,
    compute_dtype,
    describe,
    precision_name,
    select_device,
    window_memory_gb,
)
from .sliding_window import Predictor, predict_volume
from .window_plan import WindowPlan
from .windows import blending_weights, window_starts

__all__ = [
    "available_memory_gb", "choose_batch_size", "window_memory_gb",
    "CancelToken", "DEVICE_CHOICES", "PRECISION_CHOICES", "Predictor", "ProgressCallback", "autocast",
    "blending_weights", "compute_dtype", "describe", "precision_name", "predict_volume", "report", "select_device",
    "WindowPlan", "window_starts",
]
