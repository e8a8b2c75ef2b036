"""Architectures by the name a model manifest gives in ``architecture.name``.

An entry holds the hyper-parameter class (``from_manifest`` / ``to_manifest``), the network class
(built from those hyper-parameters) and the predictor that runs it on windows for the sliding window
(:class:`inference.Predictor`). How to add an architecture: docs/architecture.md.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

from torch import nn

from ..errors import HermesError
from ..inference.sliding_window import Predictor
from .config import ARCHITECTURE_NAME, HermesConfig
from .hermes import HermesNetwork
from .predictor import HermesPredictor


class Architecture(NamedTuple):
    config: Any  # a class with from_manifest(mapping) and to_manifest()
    network: Callable[[Any], nn.Module]
    predictor: Callable[..., Predictor]  # (network, task_indices, modality_slot, *, precision)


#: Manifest ``architecture.name`` -> its classes.
ARCHITECTURES: dict[str, Architecture] = {
    ARCHITECTURE_NAME: Architecture(HermesConfig, HermesNetwork, HermesPredictor),
}


def architecture(manifest_architecture: Mapping[str, Any]) -> Architecture:
    """The registry entry a manifest's ``architecture`` block names; a one-line error if unknown."""
    name = manifest_architecture.get("name")
    if name not in ARCHITECTURES:
        raise HermesError(f"unsupported architecture {name!r}; this version of HermesSegment runs "
                          f"{', '.join(map(repr, ARCHITECTURES))} models; update HermesSegment or use another model "
                          "file")
    return ARCHITECTURES[name]


def build_network(manifest_architecture: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised network of the manifest's architecture and hyper-parameters."""
    entry = architecture(manifest_architecture)
    return entry.network(entry.config.from_manifest(manifest_architecture))
