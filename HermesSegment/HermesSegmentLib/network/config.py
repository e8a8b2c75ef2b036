"""Hyper-parameters of the Hermes network, as stored in a model package's manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from ..errors import HermesError

ARCHITECTURE_NAME = "hermes-resunet"


@dataclass(frozen=True)
class HermesConfig:
    """Shape of a Hermes residual U-Net with context priors.

    The defaults are the released Hermes-R: channels 32-64-128-256-320, two residual blocks per
    stage, fusion depths 2, 2, 4, 2, 2 at the five prior sites, 72 task-prior rows (+1 null row
    addressed by index -1) and 6 modality slots of 10 tokens each.
    """

    in_channels: int = 1
    base_channels: int = 32
    channel_multipliers: tuple[int, ...] = (1, 2, 4, 8, 10)
    blocks_per_stage: tuple[int, ...] = (2, 2, 2, 2)
    fusion_depths: tuple[int, ...] = (2, 2, 4, 2, 2)
    num_task_priors: int = 72
    num_modality_slots: int = 6
    modality_tokens: int = 10
    head_dim: int = 32

    def __post_init__(self) -> None:
        if len(self.channel_multipliers) != 5 or len(self.blocks_per_stage) != 4 or len(self.fusion_depths) != 5:
            raise HermesError("architecture needs 5 channel multipliers, 4 blocks-per-stage and 5 fusion depths")
        for channels in self.site_channels:
            if channels % self.head_dim:
                raise HermesError(f"prior-site width {channels} is not a multiple of head_dim {self.head_dim}")
        if min(self.base_channels, self.num_task_priors, self.num_modality_slots, self.modality_tokens) < 1:
            raise HermesError("architecture sizes must be positive")

    @property
    def stage_channels(self) -> tuple[int, ...]:
        """Channels of the five resolution levels, full resolution first."""
        return tuple(self.base_channels * m for m in self.channel_multipliers)

    @property
    def site_channels(self) -> tuple[int, ...]:
        """Channels at the five prior sites: encoder 1/4, 1/8, 1/16, decoder 1/8, 1/4."""
        c = self.stage_channels
        return (c[2], c[3], c[4], c[3], c[2])

    @property
    def posterior_dim(self) -> int:
        """Width of a task's posterior: its tokens from the five sites concatenated."""
        return sum(self.site_channels)

    def to_manifest(self) -> dict[str, Any]:
        data = {"name": ARCHITECTURE_NAME, **asdict(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_manifest(cls, architecture: Mapping[str, Any]) -> HermesConfig:
        if architecture.get("name") != ARCHITECTURE_NAME:
            raise HermesError(
                f"unsupported architecture {architecture.get('name')!r}; this version of HermesSegment "
                f"runs {ARCHITECTURE_NAME!r} models — update HermesSegment or use another model file"
            )
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                  for k, v in architecture.items() if k in known}
        return cls(**values)


HERMES_R = HermesConfig()
