"""Import the released Hermes-R training checkpoint (``.pth``) as a model package.

The checkpoint is read with ``torch.load(weights_only=True)``: only tensors and plain
containers are accepted, so a file whose pickle would run code is refused before anything in
it runs.
"""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

from ..errors import HermesError
from .manifest import hermes_r_manifest
from .package import check_tensors, save, sha256_file

PREFERRED_STATE_KEYS = ("ema_model_state_dict", "model_state_dict")


def read_upstream_checkpoint(path: str | Path) -> tuple[dict[str, Any], str]:
    """(state dict, which key it came from). EMA weights are preferred when present."""
    import torch

    path = Path(path)
    _check_checkpoint_file(path)
    try:
        with warnings.catch_warnings():  # torch's deprecation notes are not the user's business here
            warnings.simplefilter("ignore")
            checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else "disallowed object"
        raise HermesError(
            f"{path.name} needs arbitrary Python objects to load ({first[:160]}); refusing to unpickle it — "
            "re-save it with tensors only, e.g. torch.save({'model_state_dict': model.state_dict()}, ...)"
        ) from None
    except Exception as error:  # a foreign file can fail inside the unpickler in any way
        raise HermesError(f"{path.name} is not a readable PyTorch checkpoint ({type(error).__name__}: "
                          f"{str(error)[:120]})") from None
    if not isinstance(checkpoint, Mapping):
        raise HermesError(f"{path.name} is not an upstream Hermes checkpoint (expected a dict with 'model_state_dict')")
    for key in PREFERRED_STATE_KEYS:
        state = checkpoint.get(key)
        if isinstance(state, Mapping) and state:
            return _strip_wrapper_prefix(dict(state)), key
    if checkpoint and all(hasattr(v, "shape") for v in checkpoint.values()):
        return _strip_wrapper_prefix(dict(checkpoint)), "(bare state dict)"
    raise HermesError(
        f"{path.name} has no 'model_state_dict' or 'ema_model_state_dict' (keys: "
        f"{', '.join(map(str, list(checkpoint)[:6]))})"
    )


def _check_checkpoint_file(path: Path) -> None:
    """One clear line for what is not a PyTorch checkpoint at all: a folder, a missing file, a web
    page saved instead of the download, a truncated archive, any other file. PyTorch writes a zip
    archive (``PK``), or before 1.6 a pickle (protocol 2: ``0x80 0x02``)."""
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".pth", ".pt"))
        found = f" (found: {', '.join(inside[:3])})" if inside else ""
        raise HermesError(f"{path} is a folder; give the checkpoint file (.pth) inside it{found}")
    if not path.is_file():
        raise HermesError(f"checkpoint not found: {path}; check the path")
    with open(path, "rb") as f:
        head = f.read(512)
    if head.lstrip()[:1] == b"<" and (b"<html" in head.lower() or b"<!doctype" in head.lower()):
        raise HermesError(f"{path.name} is a web page (HTML), not a checkpoint: the download saved the page "
                          "instead of the file (Google Drive shows one for large files); download the file itself")
    if head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as archive:
                archive.namelist()
        except (zipfile.BadZipFile, OSError):
            raise HermesError(f"{path.name} is incomplete (a truncated zip archive: an interrupted download?); "
                              "download it again") from None
        return
    if head[:2] != b"\x80\x02":
        raise HermesError(f"{path.name} is not a PyTorch checkpoint (neither a zip archive nor a pickle); "
                          "check that you downloaded upstream's Hermes-R .pth file")


def _strip_wrapper_prefix(state: dict[str, Any]) -> dict[str, Any]:
    """Weights saved from a DDP- or EMA-wrapped model carry a 'module.' prefix on every name."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return state


def import_upstream(checkpoint: str | Path, out: str | Path, *, dtype: str = "float32") -> Path:
    """Convert upstream's Hermes-R checkpoint into a package with the full Hermes-R manifest.

    ``dtype``: how the package stores the weights (``models.WEIGHT_DTYPES``; float16 halves the file)."""
    checkpoint = Path(checkpoint)
    state, source_key = read_upstream_checkpoint(checkpoint)
    manifest = hermes_r_manifest(checkpoint_sha256=sha256_file(checkpoint), weights=source_key)
    check_tensors({k: tuple(v.shape) for k, v in state.items()}, manifest, checkpoint.name)
    return save(out, state, manifest, dtype=dtype)
