"""Prior pools and context-prior fusion (the part that makes Hermes universal).

Each of the five sites owns learnable task priors (one token per task plus a null token, the
last row, addressed by index -1) and modality priors (``modality_tokens`` tokens per modality
slot). For a sample the tokens of its queried tasks and of its modality are concatenated and
fused with the feature map by a stack of :class:`PriorFusionBlock`.
"""

from __future__ import annotations

import torch
from torch import nn

from .attention import NormedCrossAttention, NormedMlp


class PriorFusionBlock(nn.Module):
    """One round of two-way exchange between voxels and priors.

    1. priors attend to all voxels (residual), 2. priors MLP (residual),
    3. every voxel attends to the priors (residual), 4. voxel MLP (residual).
    voxels (B, N, C), priors (B, P, C) -> same shapes.
    """

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.prior_aggregate_block = NormedCrossAttention(dim, heads, head_dim)
        self.prior_ffn = NormedMlp(dim)
        self.feat_aggregate_block = NormedCrossAttention(dim, heads, head_dim)
        self.feat_ffn = NormedMlp(dim)

    def forward(self, voxels: torch.Tensor, priors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        priors = priors + self.prior_aggregate_block(priors, voxels)
        priors = priors + self.prior_ffn(priors)
        voxels = voxels + self.feat_aggregate_block(voxels, priors)
        voxels = voxels + self.feat_ffn(voxels)
        return voxels, priors


class PriorFusionSite(nn.Module):
    """A site's prior pool and its fusion blocks.

    ``task_prior`` (num_tasks + 1, C) — the last row is the null token;
    ``modality_prior`` (num_modality_slots, modality_tokens, C).
    """

    def __init__(
        self, dim: int, depth: int, num_task_priors: int, num_modality_slots: int, modality_tokens: int, head_dim: int
    ) -> None:
        super().__init__()
        self.task_prior = nn.Parameter(nn.init.xavier_uniform_(torch.zeros(num_task_priors + 1, dim)))
        self.modality_prior = nn.Parameter(
            nn.init.xavier_uniform_(torch.zeros(num_modality_slots, modality_tokens, dim))
        )
        self.attn_layers = nn.ModuleList(PriorFusionBlock(dim, dim // head_dim, head_dim) for _ in range(depth))

    def select_priors(self, task_indices: torch.Tensor, modality_indices: torch.Tensor) -> torch.Tensor:
        """task_indices (B, T) with -1 = null, modality_indices (B, 1) -> priors (B, T + tokens, C)."""
        # Negative indices wrap to the last row, which is exactly the null token.
        tasks = self.task_prior[task_indices]
        modality = self.modality_prior[modality_indices[:, 0]]
        return torch.cat([tasks, modality], dim=1)

    def forward(
        self, features: torch.Tensor, task_indices: torch.Tensor, modality_indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, C, D, H, W) -> fused features (same shape), posterior priors (B, T + tokens, C)."""
        b, c, d, h, w = features.shape
        priors = self.select_priors(task_indices, modality_indices).to(features.dtype)
        voxels = features.flatten(2).transpose(1, 2)
        for block in self.attn_layers:
            voxels, priors = block(voxels, priors)
        return voxels.transpose(1, 2).reshape(b, c, d, h, w), priors
