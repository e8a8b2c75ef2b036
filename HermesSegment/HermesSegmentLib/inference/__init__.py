"""Inference: sliding window over the network, blending, device policy, progress and cancel."""

from .control import CancelToken, ProgressCallback, report
from .device import (DEVICE_CHOICES, PRECISION_CHOICES, autocast, compute_dtype, describe, precision_name,
                     select_device)
from .sliding_window import predict_volume
from .windows import blending_weights, window_starts

__all__ = [
    "CancelToken", "DEVICE_CHOICES", "PRECISION_CHOICES", "ProgressCallback", "autocast", "blending_weights",
    "compute_dtype", "describe", "precision_name",
    "predict_volume", "report", "select_device", "window_starts",
]
