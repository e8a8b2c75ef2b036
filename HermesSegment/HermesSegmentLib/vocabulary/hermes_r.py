"""The 71 tasks of the released Hermes-R weights (data/hermes_r_tasks.tsv) and the task serving each
(modality, target)."""

from __future__ import annotations

import csv
import functools
from dataclasses import dataclass
from typing import Tuple

from .entries import DATA_DIR, load_vocabulary

TASKS_FILE = DATA_DIR / "hermes_r_tasks.tsv"


@dataclass(frozen=True)
class HermesRTask:
    """One task of the released Hermes-R weights (a row of ``data/hermes_r_tasks.tsv``).

    ``modalities`` are the modality keys the task was trained with; ``default_for`` the modality
    keys for which this task index is the one that serves ``target``.
    """

    index: int
    dataset: str
    modalities: Tuple[str, ...]
    target: str
    default_for: Tuple[str, ...]


def _split_list(text: str) -> Tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


@functools.cache
def _load_tasks() -> Tuple[HermesRTask, ...]:
    vocab = load_vocabulary()
    with open(TASKS_FILE, encoding="utf-8", newline="") as f:
        lines = [line for line in f if line.strip() and not line.lstrip().startswith("#")]
    reader = csv.DictReader(lines, delimiter="\t")
    expected = ["index", "dataset", "modalities", "target", "default_for"]
    if reader.fieldnames != expected:
        raise ValueError(f"hermes_r_tasks.tsv: columns {reader.fieldnames} (expected {expected})")
    tasks = []
    for row in reader:
        task = HermesRTask(
            index=int(row["index"]),
            dataset=row["dataset"].strip(),
            modalities=_split_list(row["modalities"]),
            target=row["target"].strip(),
            default_for=_split_list(row["default_for"] or ""),
        )
        where = f"hermes_r_tasks.tsv: task {task.index}"
        if task.target not in vocab.targets:
            raise ValueError(f"{where}: unknown target {task.target!r}")
        for key in task.modalities + task.default_for:
            if key not in vocab.modality_keys:
                raise ValueError(f"{where}: unknown modality {key!r}")
        if not set(task.default_for) <= set(task.modalities):
            raise ValueError(f"{where}: default_for {task.default_for} is not among its modalities {task.modalities}")
        tasks.append(task)
    if [t.index for t in tasks] != list(range(len(tasks))):
        raise ValueError("hermes_r_tasks.tsv: task indices must be 0, 1, 2, ... in order")
    return tuple(tasks)


def hermes_r_tasks() -> list:
    """The tasks of the released Hermes-R weights, index order (``list[HermesRTask]``)."""
    return list(_load_tasks())


def hermes_r_defaults() -> dict:
    """``{modality key: {target key: task index}}``: which Hermes-R task serves each (modality, target).

    This is the ``defaults`` block of a Hermes-R model manifest. Raises ``ValueError`` if the task
    table names two defaults for one (modality, target).
    """
    defaults: dict = {}
    for task in _load_tasks():
        for key in task.default_for:
            per_modality = defaults.setdefault(key, {})
            if task.target in per_modality:
                raise ValueError(
                    f"hermes_r_tasks.tsv: two defaults for ({key}, {task.target}): "
                    f"{per_modality[task.target]} and {task.index}"
                )
            per_modality[task.target] = task.index
    return defaults
