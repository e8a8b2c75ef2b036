"""summary.csv: one row per (case, target) with its volume, appended atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterable, Mapping, Union

from ..atomic import atomic_paths
from ..errors import HermesError

PathLike = Union[str, Path]
SUMMARY_COLUMNS = ("case", "target", "voxels", "volume_ml", "seconds")


# --------------------------------------------------------------------------------------------
# summary.csv


def append_summary_csv(path: PathLike, rows: Iterable[Mapping[str, object]]) -> None:
    """Append rows (keys: case, target, voxels, volume_ml, seconds) to a CSV; header if new.

    Atomic: the old content plus the new rows go to a temporary file that replaces the old one.
    Not safe against two processes appending at once (batch shards: one summary per shard).
    """
    path = Path(path)
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old and old.splitlines()[0].split(",") != list(SUMMARY_COLUMNS):
        raise HermesError(f"{path}: existing file has other columns than {','.join(SUMMARY_COLUMNS)}; "
                          "move it away or choose another output folder")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="raise",
                            lineterminator="\n")
    if not old:
        writer.writeheader()
    for row in rows:
        writer.writerow(row)
    with atomic_paths([path]) as (temp,):
        temp.write_text(old + buffer.getvalue(), encoding="utf-8")
