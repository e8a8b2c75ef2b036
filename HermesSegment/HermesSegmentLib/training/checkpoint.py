"""Training checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder: ``tensors.safetensors`` (``model.*``, ``ema.*``, ``optim.<param>.<key>``,
``rng.torch``) and ``state.json`` (step, optimizer hyper-parameters and scalar state, scheduler
state, task plan, the sampler streams of every rank). It is written next to its final place and
renamed into it, so a crash mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import HermesError

TENSORS = "tensors.safetensors"
STATE = "state.json"


def optimizer_to_flat(state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An optimizer state_dict -> (tensors named ``optim.<param>.<key>``, JSON-able rest)."""
    tensors, scalars = {}, {}
    for param, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim.{param}.{key}"] = value
            else:
                scalars[f"{param}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def optimizer_from_flat(tensors: Mapping[str, torch.Tensor], rest: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_to_flat`."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, param, key = name.split(".", 2)
            state.setdefault(int(param), {})[key] = value
    for name, value in rest["scalars"].items():
        param, key = name.split(".", 1)
        state.setdefault(int(param), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def save(folder: Path, tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> None:
    """Write a checkpoint folder atomically (temporary sibling folder, then rename)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    old = folder.with_name(f".{folder.name}.old{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / TENSORS))
    (tmp / STATE).write_text(json.dumps(state), encoding="utf-8")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def load(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, state) of a checkpoint folder; a one-line HermesError when there is none."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / TENSORS).is_file() or not (folder / STATE).is_file():
        raise HermesError(f"no checkpoint to resume in {folder}; run without --resume to start training")
    return load_file(str(folder / TENSORS)), json.loads((folder / STATE).read_text(encoding="utf-8"))
