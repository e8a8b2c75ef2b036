"""Incremental learning: map a config's targets onto a model's tasks, append task priors for new ones,
deepen the network where the config asks for more blocks.

Fine-tuning a package (``--init``, the released Hermes-R included) keeps every existing task at its
index. A config target the package already serves (for the dataset's modality, or at all) reuses
that task; any other target gets a NEW row appended to the task prior of every fusion site. The
null token stays the LAST row (it is addressed by index -1), so old indices and the null token
mean exactly what they meant: before any fine-tuning, old tasks' outputs are unchanged.

The config's ``model`` may also ask for more residual blocks per stage or more fusion blocks per
prior site than the package has (more capacity for new data, without starting again). The new
blocks are appended after the package's and start as identities, so the outputs are unchanged too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..errors import HermesError
from ..models.manifest import task_entry
from ..network import HermesConfig
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


# What the config's ``model`` may change when fine-tuning: depth only; widths, tokens and heads are the weights'.
DEEPENABLE = ("blocks_per_stage", "fusion_depths")


def fine_tuned_architecture(base: HermesConfig, requested: HermesConfig, given: Iterable[str]) -> HermesConfig:
    """The package's architecture (``base``), deeper where the config (``requested``, whose ``model``
    spelled out the keys ``given``) asks for more blocks per stage or more fusion blocks per site.

    Raises HermesError for any other difference (fewer blocks, other widths, tokens or heads): weights of
    another shape cannot be fine-tuned.
    """
    deeper: dict[str, Any] = {}
    for key in sorted(given):
        wanted, have = getattr(requested, key), getattr(base, key)
        if wanted == have:
            continue
        if key in DEEPENABLE and all(w >= h for w, h in zip(wanted, have)):
            deeper[key] = wanted
            continue
        shown = [list(v) if isinstance(v, tuple) else v for v in (wanted, have)]
        raise HermesError(
            f"the config's model has {key} {shown[0]} but the --init package has {shown[1]}; when fine-tuning "
            f"only {' and '.join(DEEPENABLE)} may grow (each at least the package's): remove '{key}' from the "
            "config's model, or train from scratch without --init")
    return dataclasses.replace(base, **deeper)


def deepen(state: Mapping[str, torch.Tensor], fresh: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` completed with the blocks that the deeper network ``fresh`` (its state dict) adds.

    Every new block starts as an identity: the last layer of its residual branch is zero (``conv2`` of
    a residual block; ``to_out`` and ``fc2`` of a fusion block's attentions and MLPs), the other layers
    keep ``fresh``'s initialisation. The package's outputs are therefore unchanged before the first step,
    and the branch learns from there (zero-initialised residual branches: Goyal et al. 2017, "Accurate,
    Large Minibatch SGD", section 5.1; identity-initialised new layers: Net2DeeperNet, Chen et al. 2016).
    """
    out = dict(state)
    for name, value in fresh.items():
        if name in out:
            continue
        last_of_branch = name.endswith("conv2.conv.weight") or ".to_out." in name or ".fc2." in name
        out[name] = torch.zeros_like(value) if last_of_branch else value.clone()
    return out
