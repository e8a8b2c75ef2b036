"""The Hermes network, one small file per part.

- ``config.py``: :class:`HermesConfig` (hyper-parameters; ``HERMES_R`` is the released model)
- ``layers.py``: pre-activation residual blocks, down and up stages
- ``attention.py``: cross-attention, MLPs and their pre-norms
- ``prior_fusion.py``: per-site task/modality prior pools and the fusion blocks
- ``heads.py``: the posterior mask head (dynamic kernels) and the modality head
- ``hermes.py``: :class:`HermesNetwork`, the assembly
- ``predictor.py``: :class:`HermesPredictor`, the network as the sliding window's predictor
- ``registry.py``: :data:`ARCHITECTURES`, the architectures a manifest may name
"""

from typing import TYPE_CHECKING

from .config import ARCHITECTURE_NAME, HERMES_R, HermesConfig

if TYPE_CHECKING:  # what the lazy names below are, for type checkers
    from .hermes import HermesNetwork
    from .predictor import HermesPredictor
    from .registry import ARCHITECTURES, Architecture, architecture, build_network

__all__ = [
    "ARCHITECTURES", "ARCHITECTURE_NAME", "Architecture", "HERMES_R", "HermesConfig", "HermesNetwork",
    "HermesPredictor", "architecture", "build_network",
]

#: Names whose modules import torch: loaded on first use, so that reading a manifest (the Slicer panel
#: listing models) never imports torch.
_LAZY = {"HermesNetwork": ".hermes", "HermesPredictor": ".predictor", "ARCHITECTURES": ".registry",
         "Architecture": ".registry", "architecture": ".registry", "build_network": ".registry"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
