"""Atomic file writes: every output is written under a temporary name in its final folder and
moved into place with ``os.replace`` only when complete, so a failed or interrupted run never
leaves a half-written file (and never clobbers a good one)."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Iterator, List, Sequence, Union

PathLike = Union[str, Path]


@contextlib.contextmanager
def atomic_paths(paths: Sequence[PathLike]) -> Iterator[List[Path]]:
    """Yield temporary paths (same folder, same file-name ending) for ``paths``; on success move
    them all into place, on failure remove them and re-raise."""
    finals = [Path(p) for p in paths]
    token = uuid.uuid4().hex[:8]
    temps = [p.parent / f".partial-{token}-{p.name}" for p in finals]
    try:
        yield temps
        for temp, final in zip(temps, finals):
            os.replace(temp, final)
    except BaseException:
        for temp in temps:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        raise


def give_default_permissions(path: PathLike) -> None:
    """chmod ``path`` to what a plain ``open()`` would have created (0666 less the umask): some
    writers (safetensors) create private 0600 files, unreadable by the other users of a shared
    model folder."""
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_text(path: PathLike, text: str) -> None:
    with atomic_paths([path]) as (temp,):
        temp.write_text(text, encoding="utf-8")
