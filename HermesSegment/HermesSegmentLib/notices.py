"""Warnings the user must see: one channel for the CLI, the console API and the Slicer panel.

The engine says what it skipped, guessed or changed (a resampled DICOM series, CT values converted
to Hounsfield units, a side rule that could not run, ...) with ``logging.getLogger(__name__)
.warning(...)`` on any logger under ``HermesSegmentLib``: one line, what happened and what the
user can do. Nothing more is needed at the call site. The consumers:

- :func:`collect` gathers the warnings of one call (``segment_image`` puts them in
  ``SegmentationResult.warnings`` for the console API);
- the CLI attaches :class:`Handler`, which prints ``warning: CASE: ...`` on stderr, or a JSON line
  ``{"case": ..., "warning": ...}`` with ``--progress-json``;
- the panel reads those JSON lines from the background process (``process.BackgroundRun``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Callable, Iterator

ROOT_LOGGER = "HermesSegmentLib"


class Handler(logging.Handler):
    """Passes each WARNING (or worse) record of the engine to ``emit_line(message)``."""

    def __init__(self, emit_line: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._emit_line = emit_line

    def emit(self, record: logging.LogRecord) -> None:
        self._emit_line(record.getMessage())


@contextlib.contextmanager
def attached(handler: logging.Handler) -> Iterator[None]:
    """``handler`` receives the engine's warnings inside the block."""
    logger = logging.getLogger(ROOT_LOGGER)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


@contextlib.contextmanager
def collect() -> Iterator[list[str]]:
    """The engine's warnings issued by this thread inside the block, in order (a live list).

    Other threads' warnings (a server running two jobs) are not mixed in.
    """
    thread = threading.get_ident()
    messages: list[str] = []

    class _Collector(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.thread == thread:
                messages.append(record.getMessage())

    with attached(_Collector(logging.WARNING)):
        yield messages
