"""Progress reporting and cancellation, shared by the engine, the CLI and the Slicer module."""

from __future__ import annotations

import threading
from typing import Callable, Optional

from ..errors import CancelledError

# (stage, fraction of that stage done in [0, 1], human message)
ProgressCallback = Callable[[str, float, str], None]


class CancelToken:
    """Set from any thread (a Cancel button, a signal handler); the engine checks it between
    window batches and raises :class:`CancelledError`, so a run stops within one batch."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise CancelledError()


def report(progress: Optional[ProgressCallback], stage: str, fraction: float, message: str = "") -> None:
    if progress is not None:
        progress(stage, min(max(fraction, 0.0), 1.0), message)
