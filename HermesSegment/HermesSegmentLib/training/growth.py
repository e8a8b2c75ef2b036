"""Growing a package's network when fine-tuning: deeper and wider, outputs unchanged at the start.

A training config's ``model`` may ask, with ``--init``, for more residual blocks per stage
(``blocks_per_stage``), more fusion blocks per prior site (``fusion_depths``) or an integer multiple of
the package's ``base_channels`` (every width grows by that factor; ``head_dim`` stays, so the prior
sites get more attention heads). Whatever grows, the grown network computes exactly the package's
function before the first step (tested), and the extra capacity learns from there:

- **deeper** (:func:`deepen`): new blocks are appended to each stage or site and start as identities
  (the last layer of each new residual branch is zero: zero-initialised residual branches, Goyal et
  al. 2017, "Accurate, Large Minibatch SGD", section 5.1; Net2DeeperNet, Chen et al. 2016);
- **wider** (:func:`widen`): Net2WiderNet (Chen, Goodfellow and Shlens, "Net2Net", ICLR 2016). Each
  channel, attention head, token feature and hidden unit is copied ``factor`` times; a layer reading
  copied channels gets the copies' weights split so that they sum to the original weight. The split is
  uneven (``W / factor`` plus zero-sum noise) so that the copies receive different gradients and
  drift apart; the function is unchanged because the copies are equal. The dynamic kernels of the
  mask head are the one exception: they meet the equally copied decoder features in a dot product,
  so they are scaled by ``1 / factor`` instead.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Mapping

import torch

from ..errors import HermesError
from ..network import HermesConfig

# What the config's ``model`` may change when fine-tuning; tokens, heads' width and priors are the weights'.
DEEPENABLE = ("blocks_per_stage", "fusion_depths")
WIDENABLE = ("base_channels",)


def fine_tuned_architecture(base: HermesConfig, requested: HermesConfig, given: Iterable[str]) -> HermesConfig:
    """The package's architecture (``base``), grown where the config (``requested``, whose ``model``
    spelled out the keys ``given``) asks for more blocks per stage, more fusion blocks per site or a
    multiple of the base width.

    Raises HermesError for any other difference (fewer blocks, a width that is not a multiple, other
    tokens or head width): weights of another shape cannot be fine-tuned.
    """
    grown: dict[str, Any] = {}
    for key in sorted(given):
        wanted, have = getattr(requested, key), getattr(base, key)
        if wanted == have:
            continue
        if key in DEEPENABLE and all(w >= h for w, h in zip(wanted, have)):
            grown[key] = wanted
            continue
        if key in WIDENABLE and wanted > have and wanted % have == 0:
            grown[key] = wanted
            continue
        shown = [list(v) if isinstance(v, tuple) else v for v in (wanted, have)]
        raise HermesError(
            f"the config's model has {key} {shown[0]} but the --init package has {shown[1]}; when fine-tuning "
            f"only {' and '.join(DEEPENABLE)} may grow (each at least the package's) and {WIDENABLE[0]} by a "
            f"whole factor: change '{key}' in the config's model, or train from scratch without --init")
    return dataclasses.replace(base, **grown)


def deepen(state: Mapping[str, torch.Tensor], fresh: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` completed with the blocks that the deeper network ``fresh`` (its state dict) adds.

    The last layer of each new residual branch is zero (``conv2`` of a residual block; ``to_out`` and
    ``fc2`` of a fusion block's attentions and MLPs); the other layers keep ``fresh``'s initialisation.
    """
    out = dict(state)
    for name, value in fresh.items():
        if name in out:
            continue
        last_of_branch = name.endswith("conv2.conv.weight") or ".to_out." in name or ".fc2." in name
        out[name] = torch.zeros_like(value) if last_of_branch else value.clone()
    return out


def widen(state: Mapping[str, torch.Tensor], fresh: Mapping[str, torch.Tensor], base: HermesConfig,
          factor: int, seed: int = 0, noise: float = 0.1) -> dict[str, torch.Tensor]:
    """``state`` (a network of architecture ``base``) widened ``factor`` times to the shapes of ``fresh``.

    Every dimension that grew is a concatenation of channel blocks (one block, or several where
    tensors are concatenated: keys and values in ``to_kv``, skip and upsampled features in a decoder
    stage's first block, the five sites' tokens in the heads' input); new index ``i`` of a block of
    old size ``n`` copies old index ``i mod n``. A weight's input dimension (dim 1 of a conv or linear
    weight) is split among the copies: ``W / factor`` plus noise of ``noise x std(W) / factor`` that
    sums to zero over the copies. Tensors the widening does not touch (task-prior rows, kernel taps,
    modality slots) are copied. Raises ValueError if a shape does not fit.
    """
    generator = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for name, old in state.items():
        value = old.float()
        for dim, (n_old, n_new) in enumerate(zip(old.shape, fresh[name].shape)):
            if n_new == n_old or (dim == 0 and name.endswith("task_prior")):  # rows: grown by extend_task_priors
                continue
            if n_new != factor * n_old:
                raise ValueError(f"{name}: dimension {dim} goes from {n_old} to {n_new}, not x{factor}")
            index = _copied_index(_channel_blocks(name, dim, old.shape, base), factor)
            value = value.index_select(dim, index)
            if dim == 1 and name.endswith(".weight") and old.dim() >= 2:
                value = _split_among_copies(value, index, generator, noise, factor)
        if name.startswith("out.classifier_pred.1.fc2."):  # the dynamic kernels: see the module docstring
            value = value / factor
        out[name] = value.to(old.dtype)
    return out


def _channel_blocks(name: str, dim: int, shape: torch.Size, base: HermesConfig) -> list[int]:
    """The old sizes of the channel blocks concatenated along ``dim`` of tensor ``name`` (old ``shape``)."""
    size = shape[dim]
    if name.endswith(".to_kv.weight") and dim == 0:
        return [size // 2, size // 2]
    if name.startswith("up") and ".conv.0." in name and name.endswith(("conv1.conv.weight", "shortcut.conv.weight")) \
            and dim == 1:
        # a decoder stage's first block reads cat([skip, upsampled]); the skip is as wide as its output
        return [shape[0], size - shape[0]]
    if (name.startswith(("out.norm.", "mod_out.norm.")) and dim == 0) or \
            (name in ("out.classifier_pred.0.fc1.weight", "mod_out.classifier.fc1.weight") and dim == 1):
        return list(base.site_channels)
    return [size]


def _copied_index(blocks: list[int], factor: int) -> torch.Tensor:
    """For blocks of old sizes ``blocks``, each grown ``factor`` times: the old index of each new index."""
    parts, start = [], 0
    for n in blocks:
        parts.append(start + torch.arange(n * factor) % n)
        start += n
    return torch.cat(parts)


def _split_among_copies(value: torch.Tensor, index: torch.Tensor, generator: torch.Generator, noise: float,
                        factor: int) -> torch.Tensor:
    """Input weights (dim 1) of copied channels: W / factor each, plus noise that sums to zero per original."""
    scale = noise * float(value.std()) / factor if value.numel() > 1 else 0.0
    jitter = torch.randn(value.shape, generator=generator) * scale
    # zero-sum over the copies of each original input channel: subtract the copies' mean
    sums = torch.zeros_like(value).index_add_(1, index, jitter)
    counts = torch.bincount(index).to(value.dtype)
    mean = sums.index_select(1, index) / counts[index].view([1, -1] + [1] * (value.dim() - 2))
    return value / factor + (jitter - mean)
