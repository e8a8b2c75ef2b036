"""Model packages: one ``.safetensors`` file, weights plus the JSON manifest in its metadata.

Loading never unpickles anything. Every load validates the manifest against the schema and
checks every tensor's name and shape against the network the manifest describes.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..atomic import atomic_paths, give_default_permissions
from ..errors import HermesError
from .manifest import MANIFEST_KEY, validate_manifest

_MAX_HEADER_BYTES = 100 * 1024 * 1024
#: How a package may store its weights (safetensors dtype codes in brackets). Loading always computes in
#: float32 (or the run's autocast precision): half-precision storage halves the file, not the accuracy
#: of the arithmetic. float16 keeps 11 significant bits (weights beyond +-65504 cannot be stored);
#: bfloat16 keeps float32's range with 8 significant bits.
WEIGHT_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}


@dataclass
class LoadedModel:
    """A network in eval mode and the manifest that describes it."""

    network: Any  # HermesNetwork; typed loosely so that importing this module does not import torch
    manifest: dict[str, Any]
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.manifest["name"]

    @property
    def modality_keys(self) -> list[str]:
        return [m["key"] for m in self.manifest["modalities"]]

    def modality_entry(self, modality: str) -> dict[str, Any]:
        for entry in self.manifest["modalities"]:
            if entry["key"] == modality:
                return entry
        raise HermesError(
            f"model '{self.name}' does not handle modality {modality}; it handles: {', '.join(self.modality_keys)}"
        )

    def targets_for(self, modality: str) -> list[str]:
        """Target keys this model offers for a modality, in task order."""
        self.modality_entry(modality)
        defaults = self.manifest["defaults"].get(modality, {})
        return sorted(defaults, key=defaults.__getitem__)

    def query(self, modality: str) -> list[int]:
        """The task rows queried together for ``modality``: the manifest's ``queries`` for it (what
        the network was trained to be asked together), else every task the model offers there.

        Always the same set, so that a target's mask does not depend on the other targets asked
        (voxels attend to all queried priors); all targets cost about the same as one.
        """
        trained = self.manifest.get("queries", {}).get(modality)
        return list(trained) if trained else sorted(self.manifest["defaults"].get(modality, {}).values())

    def predictor(self, task_indices: Sequence[int], modality_slot: int, *, precision: str = "auto",
                  outputs: Optional[Sequence[int]] = None) -> Any:
        """The network as the sliding window's predictor (:class:`inference.Predictor`) for these
        task rows and modality slot, as its architecture runs it; ``outputs``: the positions in
        ``task_indices`` whose logits it returns (default: all)."""
        from ..network import architecture

        return architecture(self.manifest["architecture"]).predictor(self.network, task_indices, modality_slot,
                                                                      precision=precision, outputs=outputs)

    def task(self, index: int) -> dict[str, Any]:
        return next(t for t in self.manifest["tasks"] if t["index"] == index)

    def task_index(self, target: str, modality: str) -> int:
        offered = self.targets_for(modality)
        if target not in offered:
            from ..vocabulary import suggest

            close = suggest(target, offered)
            hint = f"; did you mean: {', '.join(close)}?" if close else f"; it offers: {', '.join(offered)}"
            raise HermesError(f"model '{self.name}' has no target '{target}' for {modality}{hint}")
        return self.manifest["defaults"][modality][target]


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_header(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse a safetensors header without reading the tensors: (tensor table, metadata).

    Raises a one-line HermesError for missing, truncated, corrupt and non-safetensors files.
    """
    path = Path(path)
    if path.is_dir():
        raise HermesError(f"{path} is a folder; give the model's .safetensors file")
    if not path.is_file():
        raise HermesError(f"model file not found: {path}")
    size = path.stat().st_size
    with open(path, "rb") as stream:
        prefix = stream.read(8)
        if len(prefix) < 8:
            raise HermesError(f"{path.name} is not a model package: file too short ({size} bytes); download it again")
        header_len = int.from_bytes(prefix, "little")
        if header_len <= 0 or header_len > _MAX_HEADER_BYTES or 8 + header_len > size:
            if prefix.startswith(b"PK\x03\x04") or (prefix[0] == 0x80 and 2 <= prefix[1] <= 5):  # torch.save's
                raise HermesError(f"{path.name} is a PyTorch checkpoint, not a HermesSegment model package; convert "
                                  "upstream's Hermes-R checkpoint with `hermes-segment models import-upstream "
                                  f"{path}`")
            kind = "truncated or corrupt" if path.suffix == ".safetensors" else "not a .safetensors file"
            raise HermesError(f"{path.name} is not a valid model package ({kind}); download or export it again")
        raw = stream.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise HermesError(f"{path.name} is not a valid model package (unreadable header); download or export it "
                          "again") from None
    if not isinstance(header, dict):
        raise HermesError(f"{path.name} is not a valid model package (unexpected header)")
    metadata = header.pop("__metadata__", None) or {}
    data_end = max((int(v["data_offsets"][1]) for v in header.values() if isinstance(v, dict) and "data_offsets" in v),
                   default=0)
    if 8 + header_len + data_end > size:
        raise HermesError(f"{path.name} is truncated ({size} bytes, needs {8 + header_len + data_end}); download it "
                          "again")
    return header, metadata


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The validated manifest of a package, without loading its weights."""
    path = Path(path)
    return _manifest_from_metadata(path, read_header(path)[1])


def _manifest_from_metadata(path: Path, metadata: Mapping[str, str]) -> dict[str, Any]:
    if MANIFEST_KEY not in metadata:
        raise HermesError(
            f"{path.name} is a safetensors file but not a HermesSegment model package (no '{MANIFEST_KEY}' "
            "metadata); import upstream checkpoints with `hermes-segment models import-upstream`"
        )
    try:
        manifest = json.loads(metadata[MANIFEST_KEY])
    except json.JSONDecodeError:
        raise HermesError(f"{path.name}: the manifest is not valid JSON; export the model again") from None
    validate_manifest(manifest, path.name)
    return manifest


def _expected_shapes(manifest: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    import torch

    from ..network import build_network

    with torch.device("meta"):
        network = build_network(manifest["architecture"])
    return {name: tuple(t.shape) for name, t in network.state_dict().items()}


def check_tensors(tensors: Mapping[str, tuple[int, ...]], manifest: Mapping[str, Any], source: str) -> None:
    """Every tensor the manifest's network needs is present with the right shape, and no others."""
    expected = _expected_shapes(manifest)
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise HermesError(
            f"{source} does not match its architecture: {len(missing)} tensors missing, "
            f"{len(unexpected)} unexpected ({detail}); the file is from another model"
        )
    for name, shape in expected.items():
        if tuple(tensors[name]) != shape:
            raise HermesError(f"{source} does not match its architecture: {name} has shape {tuple(tensors[name])}, "
                              f"expected {shape}")


def load(path: str | Path, device: str = "cpu") -> LoadedModel:
    """Load a model package: (network in eval mode on ``device``, manifest)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..network import build_network

    path = Path(path)
    header, metadata = read_header(path)
    manifest = _manifest_from_metadata(path, metadata)
    check_tensors({k: v["shape"] for k, v in header.items()}, manifest, path.name)
    _stored_dtype(header, path.name)
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise HermesError(f"{path.name} is corrupt ({error}); download or export it again") from None
    network = build_network(manifest["architecture"])
    network.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True)
    return LoadedModel(network=network.to(device).eval(), manifest=manifest, path=path)


def weights_dtype(path: str | Path) -> str:
    """How the package at ``path`` stores its weights: a key of :data:`WEIGHT_DTYPES` (read from the header)."""
    return _stored_dtype(read_header(path)[0], Path(path).name)


def _stored_dtype(header: Mapping[str, Any], source: str) -> str:
    """The key of :data:`WEIGHT_DTYPES` all tensors in ``header`` are stored as; :class:`HermesError` for any
    other storage (float64, integers, a mixture), which ``models info``, ``verify`` and loading refuse alike."""
    codes = {entry["dtype"] for entry in header.values() if isinstance(entry, dict) and "dtype" in entry}
    names = [name for name, code in WEIGHT_DTYPES.items() if code in codes]
    if len(names) != 1 or len(codes) != 1:
        raise HermesError(f"{source} stores its weights as {', '.join(sorted(codes)) or 'nothing'}; "
                          f"a package stores them all as one of {', '.join(WEIGHT_DTYPES)}")
    return names[0]


def save(path: str | Path, state_dict: Mapping[str, Any], manifest: Mapping[str, Any], *,
         dtype: str = "float32") -> Path:
    """Write a package atomically (temporary file, then rename) after validating it.

    ``dtype``: how the weights are stored, a key of :data:`WEIGHT_DTYPES` (float16 halves the file).
    Raises HermesError for an unknown ``dtype``, and for float16 when a weight lies beyond its range
    (the message suggests bfloat16).
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    if dtype not in WEIGHT_DTYPES:
        raise HermesError(f"weights can be stored as {', '.join(WEIGHT_DTYPES)}, not {dtype!r}")
    validate_manifest(manifest, path.name)
    stored = getattr(torch, dtype)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state_dict.items()}
    if stored == torch.float16:
        too_large = [k for k, v in tensors.items() if v.numel() and float(v.abs().max()) > torch.finfo(stored).max]
        if too_large:
            raise HermesError(f"{too_large[0]} has weights beyond float16's range (+-65504); store the package as "
                              "bfloat16 or float32")
    tensors = {k: v.to(stored) for k, v in tensors.items()}
    check_tensors({k: tuple(v.shape) for k, v in tensors.items()}, manifest, path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_paths([path]) as (temp,):
        save_file(tensors, str(temp), metadata={MANIFEST_KEY: json.dumps(manifest, separators=(",", ":"))})
        give_default_permissions(temp)
    return path


def verify(path: str | Path, sha256: str | None = None) -> dict[str, Any]:
    """Full check of a package: checksum (if given), manifest, tensor table, and a real load."""
    path = Path(path)
    if sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha256.strip()):
        raise HermesError(f"--sha256 {sha256[:80]!r} is not a SHA-256 digest (64 hexadecimal digits, as "
                          "`sha256sum FILE` prints it)")
    sha256 = sha256.strip() if sha256 is not None else None
    digest = sha256_file(path) if path.is_file() else None
    if sha256 is not None and digest != sha256.lower():
        raise HermesError(f"{path.name}: SHA-256 mismatch (got {digest}, expected {sha256.lower()}); download it again")
    model = load(path)
    return {"path": str(path), "sha256": digest, "name": model.name, "tasks": len(model.manifest["tasks"])}
