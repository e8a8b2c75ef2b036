"""Inference: sliding window over a predictor callable, blending, device policy, progress and cancel.

The sliding window knows nothing about the network: it calls a :class:`Predictor` on batches of
windows, as MONAI's ``sliding_window_inference`` does (the Hermes one: ``network.predictor``).

Where the windows go (``windows.py``, ``window_plan.py``) and ``control.py`` import no torch, so the
Slicer panel can count a run's windows and the preprocessing can lay its lattice without loading it;
the names below whose modules import torch are loaded on first use.
"""

from typing import TYPE_CHECKING

from .control import CancelToken, ProgressCallback, report
from .window_plan import WindowPlan
from .windows import blending_weights, window_starts

if TYPE_CHECKING:  # what the lazy names below are, for type checkers
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

__all__ = [
    "available_memory_gb", "choose_batch_size", "window_memory_gb",
    "CancelToken", "DEVICE_CHOICES", "PRECISION_CHOICES", "Predictor", "ProgressCallback", "autocast",
    "blending_weights", "compute_dtype", "describe", "precision_name", "predict_volume", "report", "select_device",
    "WindowPlan", "window_starts",
]

#: Names whose modules import torch: loaded on first use.
_LAZY = {name: ".device" for name in (
    "DEVICE_CHOICES", "PRECISION_CHOICES", "autocast", "available_memory_gb", "choose_batch_size", "compute_dtype",
    "describe", "precision_name", "select_device", "window_memory_gb")}
_LAZY.update(Predictor=".sliding_window", predict_volume=".sliding_window")


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
