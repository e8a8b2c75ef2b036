"""The OpenVINO runtime gives the torch network's logits, and converts a model once per machine."""

from __future__ import annotations

import pytest
import torch

from HermesSegmentLib.errors import HermesError
from HermesSegmentLib.network import HermesNetwork, openvino_backend

needs_openvino = pytest.mark.skipif(not openvino_backend.is_available(),
                                    reason="OpenVINO is not installed (pip install openvino)")


@needs_openvino
@pytest.mark.slow
def test_float32_logits_match_torch_for_any_batch_tasks_and_window(tiny_config, tmp_path, monkeypatch):
    torch.manual_seed(0)
    network = HermesNetwork(tiny_config).eval()
    compiled = openvino_backend.compile_network(network, window_zyx=(32, 32, 32), num_tasks=3, precision="float32",
                                                cache_key="tiny", cache_root=tmp_path)
    for shape, task_rows, slot_rows in (((2, 1, 32, 32, 32), [[0, 1, -1], [2, 0, 1]], [[0], [2]]),
                                        ((1, 1, 16, 48, 32), [[3, 1, 0, 2, -1]], [[1]])):
        image = torch.randn(shape)
        tasks, slot = torch.tensor(task_rows), torch.tensor(slot_rows)
        with torch.inference_mode():
            expected = network(image, tasks, slot)[0]
        logits = compiled(image, tasks, slot)
        assert logits.shape == expected.shape and logits.dtype == torch.float32
        assert torch.allclose(logits, expected, atol=1e-3, rtol=1e-3)

    # The second time the IR comes from the cache: conversion is never called again.
    assert (tmp_path / next(p.name for p in tmp_path.iterdir() if p.name.startswith("tiny-")) / "network.xml").is_file()
    import openvino

    def refuse(*args, **kwargs):
        raise AssertionError("converted again despite the cache")

    monkeypatch.setattr(openvino, "convert_model", refuse)
    again = openvino_backend.compile_network(network, window_zyx=(32, 32, 32), num_tasks=3, precision="float32",
                                             cache_key="tiny", cache_root=tmp_path)
    image, tasks, slot = torch.randn(1, 1, 32, 32, 32), torch.tensor([[0, 1, 2]]), torch.tensor([[0]])
    with torch.inference_mode():
        assert torch.allclose(again(image, tasks, slot), network(image, tasks, slot)[0], atol=1e-3, rtol=1e-3)


def test_missing_openvino_is_a_one_line_error(monkeypatch, tiny_config):
    monkeypatch.setattr(openvino_backend, "is_available", lambda: False)
    with pytest.raises(HermesError, match="pip install openvino"):
        openvino_backend.compile_network(HermesNetwork(tiny_config), window_zyx=(32, 32, 32), num_tasks=1)


@needs_openvino
@pytest.mark.slow
def test_segment_image_with_openvino_gives_torchs_masks():
    """The bundled demo model on a generated torso, `--backend openvino` against torch, each in the
    precision `auto` picks here: masks within Dice 0.995 (bf16), equal up to rounding in float32."""
    from HermesSegmentLib.evaluation import dice
    from HermesSegmentLib.phantoms import generate_case
    from HermesSegmentLib.pipeline import segment_image

    image, _, _ = generate_case(5, "CT", spacing=(3.0, 3.0, 4.0), orientation="LPS", supersample=False)
    shape = image.GetSize()[::-1]
    runs = {backend: segment_image(image, modality="CT", targets=["liver", "heart"], model="hermes-demo",
                                   device="cpu", backend=backend) for backend in ("torch", "openvino")}
    assert runs["openvino"].precision == runs["torch"].precision
    for ours, theirs in zip(runs["openvino"].masks, runs["torch"].masks):
        assert theirs.voxels > 0
        assert dice(ours.full(shape), theirs.full(shape)) >= 0.995, ours.key


def test_openvino_backend_refuses_a_gpu(tiny_package):
    from HermesSegmentLib.models import load
    from HermesSegmentLib.pipeline.options import SegmentOptions
    from HermesSegmentLib.pipeline.segment import _backend

    model = load(tiny_package)
    predictor = model.predictor([0, 1], 0)
    options = SegmentOptions(backend="openvino")
    with pytest.raises(HermesError, match="runs on the CPU"):
        _backend(options, model, (32, 32, 32), torch.device("cuda"), predictor)
    assert _backend(SegmentOptions(backend="auto"), model, (32, 32, 32), torch.device("cpu"), predictor) is predictor
