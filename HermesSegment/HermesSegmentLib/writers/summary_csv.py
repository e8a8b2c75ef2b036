"""summary.csv: one row per (case, target) with its volume, replaced atomically case by case."""

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


def check_summary(path: PathLike) -> str:
    """The text of the summary at ``path`` ("" when there is none); :class:`HermesError` when the file
    there is not a summary this tool wrote (another table called summary.csv is never replaced)."""
    path = Path(path)
    try:
        old = path.read_text(encoding="utf-8") if path.exists() else ""
    except (OSError, UnicodeDecodeError) as error:
        raise HermesError(f"{path}: cannot read the existing file ({error}); move it away or choose another "
                          "output folder") from None
    if old and old.splitlines()[0].split(",") != list(SUMMARY_COLUMNS):
        raise HermesError(f"{path}: existing file has other columns than {','.join(SUMMARY_COLUMNS)}; "
                          "move it away or choose another output folder")
    return old


def write_summary_rows(path: PathLike, case: str, rows: Iterable[Mapping[str, object]]) -> None:
    """Put ``rows`` (keys: case, target, voxels, volume_ml, seconds) for ``case`` in a CSV, in place of
    the case's earlier rows: one row per case and target, however many times a case is run.

    Atomic: the kept rows plus the new ones go to a temporary file that replaces the old one.
    Not safe against two processes writing at once (batch shards: one summary per shard).
    """
    path = Path(path)
    old = check_summary(path)
    kept = [row for row in csv.DictReader(io.StringIO(old)) if row["case"] != case] if old else []
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, extrasaction="raise", lineterminator="\n")
    writer.writeheader()
    for row in [*kept, *rows]:
        writer.writerow(row)
    with atomic_paths([path]) as (temp,):
        temp.write_text(buffer.getvalue(), encoding="utf-8")
