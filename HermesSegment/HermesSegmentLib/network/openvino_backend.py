"""The Hermes network on the CPU through OpenVINO (optional: ``pip install openvino``).

Why: on CPUs OpenVINO plans the whole graph, reuses activation buffers and fuses norm/activation
into the convolutions. For a Hermes-R window it ran 1.24-1.29x faster than PyTorch bf16 with ~90%
less activation memory (0.1-0.35 GB instead of 2.9 GB: issue 16, docs/benchmarks.md), which is
what lets Hermes-R run on an 8 GB laptop.

Conversion traces the loaded torch network once (``openvino.convert_model``; batch, task count
and window size stay dynamic) and saves OpenVINO IR under
``$HERMES_SEGMENT_HOME/cache/openvino/<package SHA-256>-<OpenVINO version>/``, so each model is
converted once per machine; OpenVINO's own ``CACHE_DIR`` beside it keeps the blob compiled for
this CPU. A model without a file (e.g. fresh from training) is converted in memory every time.
"""

from __future__ import annotations

import importlib.util
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_paths
from ..errors import HermesError

log = logging.getLogger(__name__)

# OpenVINO's names for the precisions of inference.device.PRECISION_CHOICES.
_PRECISION_HINTS = {"float32": "f32", "bfloat16": "bf16"}


def is_available() -> bool:
    """Whether the ``openvino`` package is installed (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


class _TaskLogits(torch.nn.Module):
    """The network with its task logits as the only output (what the sliding window blends)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, image: torch.Tensor, task_indices: torch.Tensor, modality_indices: torch.Tensor) -> torch.Tensor:
        return self.network(image, task_indices, modality_indices)[0]


class OpenVinoNetwork:
    """A compiled network, called like :class:`HermesNetwork` for its task logits:
    image (B, 1, D, H, W) float32, task_indices (B, T) long, modality_indices (B, 1) long ->
    task logits (B, T, D, H, W) float32 torch tensor on the CPU."""

    def __init__(self, compiled: Any, precision: str) -> None:
        self._request = compiled.create_infer_request()
        self.precision = precision

    def __call__(self, image: torch.Tensor, task_indices: torch.Tensor, modality_indices: torch.Tensor) -> torch.Tensor:
        inputs = [np.ascontiguousarray(t.detach().cpu().numpy())
                  for t in (image.float(), task_indices, modality_indices)]
        result = self._request.infer(inputs)
        return torch.from_numpy(np.array(next(iter(result.values())), dtype=np.float32, copy=True))


def compile_network(network: torch.nn.Module, *, window_zyx: tuple[int, int, int], num_tasks: int,
                    precision: str = "bfloat16", cache_key: str | None = None,
                    cache_root: Path | None = None) -> OpenVinoNetwork:
    """Convert ``network`` to OpenVINO (or read it from the cache) and compile it for this CPU.

    ``precision``: ``float32`` or ``bfloat16`` (OpenVINO's inference precision hint; bf16 falls back
    to f32 on CPUs without bf16 support). Threads: as many as torch uses (``torch.get_num_threads``).
    ``cache_key``: the model package's SHA-256; None converts without caching. Raises
    :class:`HermesError` when OpenVINO is not installed.
    """
    if not is_available():
        raise HermesError("--backend openvino: OpenVINO is not installed; `pip install openvino`, "
                          "or use --backend torch")
    if precision not in _PRECISION_HINTS:
        raise HermesError(f"OpenVINO runs float32 or bfloat16, not {precision}")
    import openvino as ov

    core = ov.Core()
    model = None
    ir = None
    if cache_key is not None:
        if cache_root is None:
            from ..models.catalog import user_home

            cache_root = user_home() / "cache" / "openvino"
        folder = cache_root / f"{cache_key}-{ov.get_version().split('-')[0]}"
        ir = folder / "network.xml"
        core.set_property({"CACHE_DIR": str(cache_root / "compiled")})
        if ir.is_file() and ir.with_suffix(".bin").is_file():
            model = core.read_model(str(ir))
    if model is None:
        log.info("converting the network to OpenVINO (once per model and machine)")
        wrapped = _TaskLogits(network.to("cpu").eval()).eval()
        # A small example input: tracing records the graph, the shapes stay dynamic.
        side = 16 * max(1, min(2, min(window_zyx) // 16))
        example = (torch.zeros(1, 1, side, side, side), torch.zeros(1, num_tasks, dtype=torch.long),
                   torch.zeros(1, 1, dtype=torch.long))
        # The tracer warns that shape checks inside group_norm become constants: they hold for every
        # input shape (the parity test runs other batch, task and window sizes).
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            model = ov.convert_model(wrapped, example_input=example)
        if ir is not None:
            ir.parent.mkdir(parents=True, exist_ok=True)
            # save_model writes the .bin beside the .xml under the same (temporary) stem.
            with atomic_paths([ir, ir.with_suffix(".bin")]) as (xml, _):
                ov.save_model(model, str(xml), compress_to_fp16=False)
    # As many threads as torch uses (all cores unless the user limited them, e.g. OMP_NUM_THREADS).
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": _PRECISION_HINTS[precision],
                                                 "PERFORMANCE_HINT": "LATENCY",
                                                 "INFERENCE_NUM_THREADS": torch.get_num_threads()})
    return OpenVinoNetwork(compiled, precision)


class OpenVinoPredictor:
    """A :class:`~HermesSegmentLib.network.predictor.HermesPredictor` run by OpenVINO on the CPU:
    the same task query, outputs and modality; ``precision`` ``auto`` is bf16 where the CPU
    multiplies it natively, else float32."""

    def __init__(self, hermes: Any, window_zyx: tuple[int, int, int], cache_key: str | None = None) -> None:
        from ..inference.device import compute_dtype, precision_name

        self.task_indices, self.outputs = hermes.task_indices, hermes.outputs
        self.modality_slot = hermes.modality_slot
        self.device = torch.device("cpu")
        self.dtype = compute_dtype(self.device, hermes.precision)
        self._compiled = compile_network(hermes.network, window_zyx=window_zyx, num_tasks=len(self.task_indices),
                                         precision=precision_name(self.dtype), cache_key=cache_key)

    def to(self, device: torch.device | str) -> OpenVinoPredictor:
        if torch.device(device).type != "cpu":
            raise HermesError("--backend openvino runs on the CPU; use --backend torch (or auto) on a GPU")
        return self

    def __call__(self, windows: torch.Tensor) -> torch.Tensor:
        count = windows.shape[0]
        tasks = torch.as_tensor(self.task_indices, dtype=torch.long).expand(count, -1)
        modality = torch.tensor([[self.modality_slot]], dtype=torch.long).expand(count, -1)
        return self._compiled(windows, tasks, modality)[:, self.outputs]
