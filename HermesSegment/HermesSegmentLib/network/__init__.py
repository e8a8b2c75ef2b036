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

from .config import ARCHITECTURE_NAME, HERMES_R, HermesConfig
from .hermes import HermesNetwork
from .predictor import HermesPredictor
from .registry import ARCHITECTURES, Architecture, architecture, build_network

__all__ = [
    "ARCHITECTURES", "ARCHITECTURE_NAME", "Architecture", "HERMES_R", "HermesConfig", "HermesNetwork",
    "HermesPredictor", "architecture", "build_network",
]
