"""Sliding-window engine: exactness, agreement with MONAI, batching, cancellation, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from HermesSegmentLib.errors import CancelledError, HermesError
from HermesSegmentLib.inference import CancelToken, predict_volume, select_device
from HermesSegmentLib.network import HermesNetwork, HermesPredictor


@pytest.fixture
def network(tiny_config):
    torch.manual_seed(0)
    return HermesNetwork(tiny_config).eval()


def _forward_probabilities(network, volume, tasks, slot):
    with torch.inference_mode():
        logits, _ = network(torch.from_numpy(volume)[None, None], torch.tensor([tasks]), torch.tensor([[slot]]))
    return (torch.sigmoid(logits[0]) * 255).round().to(torch.uint8).numpy()


def test_one_window_covering_the_volume_equals_a_whole_volume_forward(network):
    volume = np.random.default_rng(0).normal(size=(32, 48, 32)).astype(np.float32)
    # Batch size 1, as the forward: batches are always full, and one-window batches convolve with other kernels.
    ours = predict_volume(HermesPredictor(network, [0, 2], 1, precision="float32"), volume, window_zyx=(32, 48, 32),
                          batch_size=1)
    np.testing.assert_array_equal(ours, _forward_probabilities(network, volume, [0, 2], 1))


@pytest.mark.parametrize("overlap,mode", [(0.5, "gaussian"), (0.25, "gaussian"), (0.5, "uniform")])
def test_matches_monai_sliding_window_inference(network, overlap, mode):
    from monai.inferers import sliding_window_inference

    volume = np.random.default_rng(1).normal(size=(50, 40, 57)).astype(np.float32)
    tasks = [0, 3, 1]
    ours = predict_volume(HermesPredictor(network, tasks, 2, precision="float32"), volume, window_zyx=(32, 32, 32),
                          overlap=overlap, blending=mode, batch_size=3)

    def predictor(x):
        n = x.shape[0]
        return network(x, torch.tensor([tasks]).expand(n, -1), torch.tensor([[2]]).expand(n, -1))[0]

    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(volume)[None, None], (32, 32, 32), 2, predictor,
                                          overlap=overlap, mode={"uniform": "constant"}.get(mode, mode))
    theirs = (torch.sigmoid(logits[0]) * 255).round().to(torch.uint8).numpy()
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


@pytest.mark.slow
@pytest.mark.parametrize("overlap", [0.5, 0.25])
def test_a_lattice_crop_gives_the_whole_volume_result_inside_the_box(network, overlap):
    """The crop skips the windows that do not reach the box and runs the others at the same places:
    every voxel of the box gets the very same values as a whole-volume run."""
    from HermesSegmentLib.inference.windows import lattice_box, window_starts

    volume = np.random.default_rng(4).normal(size=(100, 80, 32)).astype(np.float32)
    window = (32, 32, 32)

    def run(array):
        return predict_volume(HermesPredictor(network, [0, 1], 1, precision="float32"), array, window_zyx=window,
                              overlap=overlap, batch_size=1)

    whole = run(volume)
    box = ((40, 70), (5, 60), (0, 32))
    crop = tuple(slice(a, b) for a, b in lattice_box(box, volume.shape, window, overlap))
    assert len(window_starts(volume[crop].shape, window, overlap)) < len(window_starts(volume.shape, window, overlap))
    inside = tuple(slice(a - c.start, b - c.start) for (a, b), c in zip(box, crop))
    region = (slice(None), *(slice(a, b) for a, b in box))
    np.testing.assert_array_equal(run(volume[crop])[(slice(None), *inside)], whole[region])
    # A crop that is not made of lattice windows shifts the windows and changes the result.
    shifted = (slice(crop[0].start + 3, crop[0].stop), *crop[1:])
    moved = run(volume[shifted])
    assert not np.array_equal(moved[(slice(None), slice(inside[0].start - 3, inside[0].stop - 3), *inside[1:])],
                              whole[region])


def test_batch_size_does_not_change_the_result(network):
    volume = np.random.default_rng(2).normal(size=(40, 40, 40)).astype(np.float32)
    predictor = HermesPredictor(network, [1], 0, precision="float32")
    one = predict_volume(predictor, volume, window_zyx=(32, 32, 32), batch_size=1)
    five = predict_volume(predictor, volume, window_zyx=(32, 32, 32), batch_size=5)
    # Batched convolutions may round differently: at most one quantisation step apart.
    assert np.abs(one.astype(int) - five.astype(int)).max() <= 1


def test_volume_smaller_than_the_window_is_padded(network):
    volume = np.random.default_rng(3).normal(size=(20, 32, 10)).astype(np.float32)
    out = predict_volume(HermesPredictor(network, [0], 0), volume, window_zyx=(32, 32, 32))
    assert out.shape == (1, 20, 32, 10)


def test_cancel_stops_within_one_batch_and_progress_is_reported(network):
    volume = np.random.default_rng(4).normal(size=(48, 48, 48)).astype(np.float32)
    token, seen = CancelToken(), []

    def progress(stage, fraction, message):
        seen.append(fraction)
        if fraction > 0:
            token.cancel()

    with pytest.raises(CancelledError):
        predict_volume(HermesPredictor(network, [0], 0), volume, window_zyx=(32, 32, 32), batch_size=2,
                       progress=progress, cancel=token)
    assert seen[0] == 0.0 and 0 < seen[-1] < 1 and len(seen) == 2

    seen.clear()
    predict_volume(HermesPredictor(network, [0], 0), volume, window_zyx=(32, 32, 32),
                   progress=lambda s, f, m: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0


def test_device_policy():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type in {"cpu", "cuda", "mps"}
    if not torch.cuda.is_available():
        with pytest.raises(HermesError, match="no CUDA GPU"):
            select_device("cuda")
    with pytest.raises(HermesError, match="unknown device"):
        select_device("tpu")


def test_bad_overlap_is_a_one_line_error(network):
    with pytest.raises(HermesError, match="overlap"):
        predict_volume(HermesPredictor(network, [0], 0), np.zeros((32, 32, 32), np.float32), window_zyx=(32, 32, 32),
                       overlap=1.0)


def test_precision_policy(monkeypatch):
    from HermesSegmentLib.inference import device as device_policy

    cpu = torch.device("cpu")
    assert device_policy.compute_dtype(cpu, "float32") is None
    assert device_policy.compute_dtype(cpu, "bfloat16") is torch.bfloat16
    for native in (False, True):  # auto: bf16 only where the CPU multiplies it natively
        monkeypatch.setattr(device_policy, "cpu_has_native_bf16", lambda native=native: native)
        assert device_policy.compute_dtype(cpu, "auto") is (torch.bfloat16 if native else None)
    assert device_policy.compute_dtype(torch.device("mps"), "auto") is None
    with pytest.raises(HermesError, match="not supported on mps"):
        device_policy.compute_dtype(torch.device("mps"), "bfloat16")
    with pytest.raises(HermesError, match="unknown precision"):
        device_policy.compute_dtype(cpu, "fp8")


def test_bfloat16_runs_mixed_precision_close_to_float32(network):
    volume = np.random.default_rng(5).normal(size=(40, 40, 40)).astype(np.float32)
    full = predict_volume(HermesPredictor(network, [0, 1], 0, precision="float32"), volume, window_zyx=(32, 32, 32))
    mixed = predict_volume(HermesPredictor(network, [0, 1], 0, precision="bfloat16"), volume, window_zyx=(32, 32, 32))
    difference = np.abs(full.astype(int) - mixed.astype(int))
    assert difference.max() > 0  # autocast really ran
    assert difference.mean() < 3.0, difference.mean()
