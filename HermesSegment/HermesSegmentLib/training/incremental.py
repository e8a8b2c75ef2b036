"""Incremental learning: map a config's targets onto a model's tasks, append task priors for new ones.

Fine-tuning a package (``--init``, the released Hermes-R included) keeps every existing task at its
index. A config target the package already serves (for the dataset's modality, or at all) reuses
that task; any other target gets a NEW row appended to the task prior of every fusion site. The
null token stays the LAST row (it is addressed by index -1), so old indices and the null token
mean exactly what they meant: before any fine-tuning, old tasks' outputs are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from ..models.manifest import task_entry
from .config import TrainingConfig


@dataclass
class TaskPlan:
    """``tasks``: manifest task entries (the package's, then new ones); ``per_dataset``: for each
    config dataset, target -> task index; ``num_task_priors``: rows without the null token;
    ``new``: indices of the tasks this config adds."""

    tasks: list[dict[str, Any]]
    per_dataset: list[dict[str, int]]
    num_task_priors: int
    new: list[int] = field(default_factory=list)


def plan_tasks(config: TrainingConfig, base: Mapping[str, Any] | None = None) -> TaskPlan:
    """Which task index serves each (dataset, target); new targets are appended after the base rows."""
    tasks = [dict(t) for t in base["tasks"]] if base else []
    defaults = base["defaults"] if base else {}
    rows = base["architecture"]["num_task_priors"] if base else 0
    new: dict[str, dict[str, Any]] = {}
    per_dataset = []
    for spec in config.datasets:
        mapping = {}
        for target in spec.targets:
            index = defaults.get(spec.modality, {}).get(target)
            if index is None:
                index = next((t["index"] for t in tasks if t["target"] == target), None)
            if index is None:
                entry = task_entry(rows, target, spec.name, [spec.modality])
                tasks.append(entry)
                new[target] = entry
                index, rows = rows, rows + 1
            elif target in new:  # a new task annotated by several datasets: record them all
                entry = new[target]
                if spec.name not in entry["dataset"].split("+"):
                    entry["dataset"] += "+" + spec.name
                if spec.modality not in entry["modalities"]:
                    entry["modalities"].append(spec.modality)
            mapping[target] = index
        per_dataset.append(mapping)
    return TaskPlan(tasks=tasks, per_dataset=per_dataset, num_task_priors=rows, new=[e["index"] for e in new.values()])


def modality_queries(config: TrainingConfig, per_dataset: Sequence[Mapping[str, int]]) -> dict[str, list[int]]:
    """{modality: the sorted task indices trained for it}: with ``query: modality`` every crop of
    that modality asks exactly these, and the engine asks the same (the manifest's ``queries``)."""
    queries: dict[str, set[int]] = {}
    for spec, tasks in zip(config.datasets, per_dataset):
        queries.setdefault(spec.modality, set()).update(tasks.values())
    return {modality: sorted(indices) for modality, indices in queries.items()}


def extend_task_priors(state: Mapping[str, torch.Tensor], fresh: Mapping[str, torch.Tensor],
                       old_rows: int) -> dict[str, torch.Tensor]:
    """``state`` with every ``*.task_prior`` (old_rows + 1, C) grown to ``fresh``'s row count.

    Rows 0..old_rows-1 are copied, the new rows come from ``fresh`` (a freshly initialised network
    of the grown size), and the old null row goes last again.
    """
    out = dict(state)
    for name, prior in state.items():
        if not name.endswith("task_prior"):
            continue
        grown = fresh[name]
        if prior.shape[0] != old_rows + 1 or grown.shape[1] != prior.shape[1]:
            raise ValueError(f"{name}: expected {old_rows + 1} rows of width {grown.shape[1]}, got "
                             f"{tuple(prior.shape)}")
        out[name] = torch.cat([prior[:old_rows], grown[old_rows:-1].to(prior.dtype), prior[old_rows:]], dim=0)
    return out
