"""Where a benchmark's tables go in ``docs/benchmarks.md``: newest first.

The file opens with its introduction, then one ``### `` section per dated run, the newest at the
top. A new run's text is put before the first such section (after the introduction), not at the
end, so that a reader meets the latest figures first. Written to a temporary file and renamed: an
interrupted benchmark never leaves half a file.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HermesSegment"))

from HermesSegmentLib.atomic import atomic_paths


def add_newest_first(path: Path, text: str) -> None:
    """Insert ``text`` (Markdown starting with its own ``### `` heading) into ``path`` before the
    first ``### `` section, or at the end when there is none; a missing file is created."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    lines = old.splitlines(keepends=True)
    first = next((i for i, line in enumerate(lines) if line.startswith("### ")), len(lines))
    head, tail = "".join(lines[:first]), "".join(lines[first:])
    if head and not head.endswith("\n"):
        head += "\n"
    if head and not head.endswith("\n\n"):
        head += "\n"
    block = text.rstrip("\n") + "\n" + ("\n" if tail else "")
    with atomic_paths([path]) as (temporary,):
        temporary.write_text(head + block + tail, encoding="utf-8")
