"""Heads that turn posterior priors into outputs.

A task's posterior is its tokens from the five sites concatenated (width ``posterior_dim``,
1088 for Hermes-R). The mask head maps it to a dynamic 1x1 conv kernel over the full-resolution
decoder features; the modality head classifies the image's modality from the modality tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import Mlp


class PosteriorMaskHead(nn.Module):
    """Per-task dynamic kernels -> per-task logits.

    features (B, K, D, H, W), task posteriors: list of (B, T, C_site) -> logits (B, T, D, H, W).
    """

    def __init__(self, posterior_dim: int, kernel_dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(posterior_dim)
        self.classifier_pred = nn.Sequential(Mlp(posterior_dim, out_dim=kernel_dim),
                                             Mlp(kernel_dim, out_dim=kernel_dim))
        for module in self.classifier_pred.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def task_kernels(self, task_posteriors: list[torch.Tensor]) -> torch.Tensor:
        """list of (B, T, C_site) -> kernels (B, T, K)."""
        return self.classifier_pred(self.norm(torch.cat(task_posteriors, dim=2)))

    def forward(self, features: torch.Tensor, task_posteriors: list[torch.Tensor]) -> torch.Tensor:
        kernels = self.task_kernels(task_posteriors).to(features.dtype)
        return torch.einsum("bkdhw,btk->btdhw", features, kernels)


class ModalityHead(nn.Module):
    """Modality tokens (list of (B, M, C_site)) -> modality logits (B, num_modality_slots)."""

    def __init__(self, posterior_dim: int, num_modality_slots: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(posterior_dim)
        self.classifier = Mlp(posterior_dim, out_dim=num_modality_slots)

    def forward(self, modality_posteriors: list[torch.Tensor]) -> torch.Tensor:
        tokens = self.norm(torch.cat(modality_posteriors, dim=2))
        return self.classifier(tokens.mean(dim=1))
