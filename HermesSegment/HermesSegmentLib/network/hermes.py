"""The Hermes network: a residual U-Net whose features are fused with task and modality priors.

Attribute names (``inc``, ``down1``, ``prior_init_fuse_2``, ``up1``, ``out``, ``mod_out``...)
are those of the released Hermes-R state dict, so its weights load unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import HERMES_R, HermesConfig
from .heads import ModalityHead, PosteriorMaskHead
from .layers import DownStage, InputStem, UpStage
from .prior_fusion import PriorFusionSite


class HermesNetwork(nn.Module):
    """image (B, 1, D, H, W), task_indices (B, T) long (-1 = padding), modality_indices (B, 1) long
    -> task logits (B, T, D, H, W) (one sigmoid per task), modality logits (B, num_modality_slots).

    D, H and W must be multiples of 16 (four 2x poolings).
    """

    def __init__(self, config: HermesConfig = HERMES_R) -> None:
        super().__init__()
        self.config = config
        c1, c2, c3, c4, c5 = config.stage_channels
        blocks = config.blocks_per_stage

        def site(dim: int, depth: int) -> PriorFusionSite:
            return PriorFusionSite(
                dim, depth, config.num_task_priors, config.num_modality_slots, config.modality_tokens, config.head_dim
            )

        depths = config.fusion_depths
        self.inc = InputStem(config.in_channels, c1)
        self.down1 = DownStage(c1, c2, blocks[0])
        self.down2 = DownStage(c2, c3, blocks[1])
        self.prior_init_fuse_2 = site(c3, depths[0])
        self.down3 = DownStage(c3, c4, blocks[2])
        self.prior_init_fuse_3 = site(c4, depths[1])
        self.down4 = DownStage(c4, c5, blocks[3])
        self.prior_init_fuse_4 = site(c5, depths[2])
        self.up1 = UpStage(c5, c4, blocks[2])
        self.prior_fuse_5 = site(c4, depths[3])
        self.up2 = UpStage(c4, c3, blocks[1])
        self.prior_fuse_6 = site(c3, depths[4])
        self.up3 = UpStage(c3, c2, blocks[0])
        self.up4 = UpStage(c2, c1, blocks[0])
        self.out = PosteriorMaskHead(config.posterior_dim, c1)
        self.mod_out = ModalityHead(config.posterior_dim, config.num_modality_slots)

    def forward(
        self, image: torch.Tensor, task_indices: torch.Tensor, modality_indices: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        num_tasks = task_indices.shape[1]
        x1 = self.inc(image)
        x2 = self.down1(x1)
        x3, p2 = self.prior_init_fuse_2(self.down2(x2), task_indices, modality_indices)
        x4, p3 = self.prior_init_fuse_3(self.down3(x3), task_indices, modality_indices)
        x5, p4 = self.prior_init_fuse_4(self.down4(x4), task_indices, modality_indices)
        y, p5 = self.prior_fuse_5(self.up1(x5, x4), task_indices, modality_indices)
        y, p6 = self.prior_fuse_6(self.up2(y, x3), task_indices, modality_indices)
        y = self.up4(self.up3(y, x2), x1)
        posteriors = [p2, p3, p4, p5, p6]
        task_logits = self.out(y, [p[:, :num_tasks] for p in posteriors])
        modality_logits = self.mod_out([p[:, num_tasks:] for p in posteriors])
        return task_logits, modality_logits
