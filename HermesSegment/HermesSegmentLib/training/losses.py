"""Partial-label losses: BCE + Dice per queried task, counted only where the task is annotated.

A sample's dataset annotates only some targets and its query is a random subset of those, padded
with the null token (-1). Padded slots and anything else marked invalid contribute nothing: not to
the numerator, not to the count. The modality head adds a small cross-entropy (x0.01, as upstream).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MODALITY_WEIGHT = 0.01
_DICE_SMOOTH = 1.0


def per_task_losses(logits: torch.Tensor, masks: torch.Tensor, recall_weight: float = 0.0) -> torch.Tensor:
    """logits, masks (B, T, D, H, W) -> BCE + soft Dice (+ ``recall_weight`` x the mean BCE over
    the target's own voxels) per (sample, task), (B, T) float32.

    Why the recall term: a task whose logits sit far below zero everywhere -- a new task added to
    a trained model starts there (measured: -20 on average on head-and-neck crops for the seven
    new head-and-neck tasks of the demo model) -- gets no gradient from the Dice (sigmoid'(z) ~
    e^z) and only |target|/|window| of the BCE's, so a small organ is never found (stage A in
    docs/experiments.md: Dice 0 after 2500 steps). The mean BCE over the target's voxels pushes
    them up with a weight that does not shrink with the organ, and fades once they are found.
    """
    logits = logits.float().flatten(2)
    masks = masks.float().flatten(2)
    voxelwise = F.binary_cross_entropy_with_logits(logits, masks, reduction="none")
    bce = voxelwise.mean(dim=2)
    probs = torch.sigmoid(logits)
    intersection = (probs * masks).sum(dim=2)
    dice = 1 - (2 * intersection + _DICE_SMOOTH) / (probs.sum(dim=2) + masks.sum(dim=2) + _DICE_SMOOTH)
    if not recall_weight:
        return bce + dice
    recall = (voxelwise * masks).sum(dim=2) / masks.sum(dim=2).clamp_min(1.0)
    return bce + dice + recall_weight * recall


def partial_label_loss(logits: torch.Tensor, masks: torch.Tensor, valid: torch.Tensor,
                       recall_weight: float = 0.0) -> torch.Tensor:
    """Mean of BCE + Dice (+ the recall term) over the valid (sample, task) pairs only. valid (B, T) bool."""
    losses = per_task_losses(logits, masks, recall_weight)
    weights = valid.to(losses.dtype)
    # where() rather than multiplication: a NaN/Inf in an ignored slot must not leak in either.
    return torch.where(valid, losses, torch.zeros_like(losses)).sum() / weights.sum().clamp_min(1.0)


def modality_loss(modality_logits: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
    """modality_logits (B, slots), modality (B, 1) long -> 0.01 x cross-entropy."""
    return MODALITY_WEIGHT * F.cross_entropy(modality_logits.float(), modality[:, 0])


def query_consistency_loss(logits: torch.Tensor, other_logits: torch.Tensor, match: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between a task's logits under two queries of the same crop.

    logits (B, T, D, H, W), other_logits (B, T2, D, H, W); match (B, T) long: the slot of the same
    task in the other query, -1 where it was not asked there. Both sides get gradients: a target's
    mask should not depend on which other targets are asked with it.
    """
    matched = match >= 0
    paired = torch.gather(other_logits, 1, match.clamp_min(0)[..., None, None, None].expand_as(logits))
    error = (logits.float() - paired.float()).pow(2).flatten(2).mean(dim=2)
    return torch.where(matched, error, torch.zeros_like(error)).sum() / matched.float().sum().clamp_min(1.0)
