"""Model packages: read, write, verify, import from upstream, and the catalog.

``load(path_or_name)`` is the entry point: it returns a :class:`LoadedModel` (network in eval
mode + manifest). A name is looked up in the catalog and the user's model folder.
"""

from __future__ import annotations

from pathlib import Path

from ..pipeline.options import DEFAULT_MODEL
from .catalog import ModelListing, add, download, list_models, remove, resolve, user_models_dir
from .manifest import MANIFEST_KEY, hermes_r_manifest, validate_manifest
from .package import WEIGHT_DTYPES, LoadedModel, read_manifest, save, sha256_file, verify, weights_dtype
from .package import load as _load_file
from .upstream import import_upstream


def load(model: str | Path = DEFAULT_MODEL, device: str = "cpu") -> LoadedModel:
    """Load a model package by catalog name or path: (network in eval mode, manifest)."""
    return _load_file(resolve(model), device=device)


__all__ = [
    "DEFAULT_MODEL", "WEIGHT_DTYPES", "LoadedModel", "MANIFEST_KEY", "ModelListing", "add", "download",
    "hermes_r_manifest", "import_upstream", "list_models", "load", "read_manifest", "remove", "resolve", "save",
    "sha256_file", "user_models_dir", "validate_manifest", "verify", "weights_dtype",
]
