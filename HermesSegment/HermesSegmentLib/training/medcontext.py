"""MedContext: a masked-input consistency add-on (config ``medcontext: true``, off by default).

The EMA teacher segments the clean crop; the student gets the same crop with random cubic
patches replaced by noise or zeros and must (a) still match the ground truth (the usual
supervised loss, on its masked input) and (b) reproduce the teacher's logits (MSE in logit
space, on the queried annotated tasks only). The student has to infer hidden anatomy from its
context, which is the point of the add-on. Cost: one extra forward pass (teacher, no gradient).
"""

from __future__ import annotations

import numpy as np
import torch


def mask_patches(image: torch.Tensor, rng: np.random.Generator, ratio: float, patch: int) -> torch.Tensor:
    """image (B, 1, D, H, W) -> a copy where about ``ratio`` of the ``patch``^3 cells are replaced,
    each by standard normal noise (half of them) or zeros (the z-scored mean)."""
    b, _, d, h, w = image.shape
    grid = (b, -(-d // patch), -(-h // patch), -(-w // patch))
    hidden = rng.random(grid) < ratio
    noisy = rng.random(grid) < 0.5

    def expand(cells: np.ndarray) -> torch.Tensor:
        full = cells.repeat(patch, 1).repeat(patch, 2).repeat(patch, 3)[:, :d, :h, :w]
        return torch.from_numpy(np.ascontiguousarray(full))[:, None].to(image.device)

    noise = torch.from_numpy(rng.standard_normal(image.shape, dtype=np.float32)).to(image.device, image.dtype)
    masked = torch.where(expand(hidden & noisy), noise, image)
    return torch.where(expand(hidden & ~noisy), torch.zeros_like(image), masked)


def consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """MSE between student and (detached) teacher logits (B, T, D, H, W), over valid (B, T) tasks."""
    error = (student_logits.float() - teacher_logits.detach().float()).pow(2).flatten(2).mean(dim=2)
    return torch.where(valid, error, torch.zeros_like(error)).sum() / valid.float().sum().clamp_min(1.0)
