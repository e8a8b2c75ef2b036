"""CPU benchmark: every speed claim of the engine as a ratio against a baseline measured in the same run.

    python benchmarks/bench_inference.py [--scale small|full] [--hermes-r] [--reps 3] [--write docs/benchmarks.md]

One run, on a generated CT (the benchmarks' phantom torso, benchmarks/phantom_ct.py) and the
bundled demo model; every configuration runs ``--reps`` times (>= 3), interleaved with the others
so that a busy machine slows them alike, and is reported as min / median seconds:

1. Engine vs MONAI: segment_image with every target in the default precision (a) and in float32
   (c) against MONAI's ``sliding_window_inference`` (b: float32, the same network, task query,
   window, overlap 0.5, Gaussian blending and batch size, on the model-space volume without our
   body crop; the same mapping back). Masks compared per target (Dice; "=" when bit for bit).
   Our runs skip the clean-up (side rule, one piece), which is not part of the engine.
2. Only the windows the asked targets need (the default) vs every window (``--no-target-windows``):
   one target, a region, every target; windows run of the lattice, time, and each mask against
   the full run's. 2b: the windows Hermes-R's geometry needs on the large CT, counted from the
   phantom's true organs (with ``--hermes-r``, times the measured seconds per window).
3. torch vs OpenVINO per window (the network alone, the default precision, the engine's batch
   size, windows cut from the CT's model space); logits compared. Skipped, with the reason, when
   OpenVINO is not installed.
4. The share of this CPU's peak the network reaches: the peak is the best matrix multiplication
   rate (2 n^3 / s, n = 2048, in the network's precision) measured in every repetition of
   section 3; the network's arithmetic per window is counted by ``torch.utils.flop_counter``
   (convolutions and matrix products).
5. The input-grid stages on a large CT (issue 16, item 6): anti-aliasing on every core vs one
   pass per axis on one thread (the code before), and the organ clean-up (largest piece of each
   one-piece organ, on its true mask's box) by ITK's labelling vs scipy's (the code before);
   results compared bit for bit.

``--scale small`` (default, a few minutes on two busy cores): the network sections on a
320 x 320 x 320 mm field (160 x 160 x 64 voxels at 2 x 2 x 5 mm: 27 windows of the demo model),
the input-grid stages on 512 x 512 x 300 voxels. ``--scale full``: the whole torso on 512 x 512
x 300 voxels (112 windows), the input-grid stages on 512 x 512 x 600. ``--hermes-r`` adds
sections 3 and 4 for a Hermes-R-sized network (random weights, 128^3 windows, the 45 CT tasks,
one window per batch: minutes per repetition on a CPU).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HermesSegment"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from HermesSegmentLib import vocabulary
from HermesSegmentLib.evaluation import dice as array_dice
from HermesSegmentLib.inference import compute_dtype, precision_name
from HermesSegmentLib.inference.window_plan import corners_near, covering_corners
from HermesSegmentLib.inference.windows import window_starts
from HermesSegmentLib.mask import TargetMask, bounding_box
from HermesSegmentLib.models import LoadedModel, load
from HermesSegmentLib.network import HERMES_R, HermesNetwork, openvino_backend
from HermesSegmentLib.network.predictor import HermesPredictor
from HermesSegmentLib.pipeline import segment_image
from HermesSegmentLib.postprocess import PostprocessOptions
from HermesSegmentLib.postprocess.components import apply as clean_up
from HermesSegmentLib.postprocess.to_input_grid import probabilities_to_mask, reference_geometry
from HermesSegmentLib.preprocess import model_space, to_model_space
from HermesSegmentLib.training.datasets import resample_label
from phantom_ct import ct_phantom
from results_file import add_newest_first

MODEL = "hermes-demo"
ONE_TARGET = "kidney_left"
REGION = ("liver", "kidney_left", "stomach")  # the demo model's abdominal CT targets
ABDOMEN = ("liver", "spleen", "kidney_left", "kidney_right", "stomach", "aorta")  # of the phantom, for Hermes-R
NO_CLEANUP = PostprocessOptions(side_constraint=False, single_piece=False)
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Scale:
    name: str
    network_size_xyz: tuple[int, int, int]  # the CT the network sections segment
    network_spacing_xyz: tuple[float, float, float]
    grid_size_xyz: tuple[int, int, int]  # the CT of the input-grid stages
    grid_spacing_xyz: tuple[float, float, float]


SCALES = {
    "small": Scale("small", (160, 160, 64), (2.0, 2.0, 5.0), (512, 512, 300), (0.8, 0.8, 2.5)),
    "full": Scale("full", (512, 512, 300), (0.8, 0.8, 2.5), (512, 512, 600), (0.8, 0.8, 1.25)),
}


# --------------------------------------------------------------------------------------------
# Repetitions


class Timings:
    """Seconds of each named configuration over the repetitions, and the first run's value."""

    def __init__(self) -> None:
        self.seconds: dict[str, list[float]] = {}
        self.first: dict[str, Any] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> None:
        started = time.perf_counter()
        value = fn()
        self.seconds.setdefault(name, []).append(time.perf_counter() - started)
        self.first.setdefault(name, value)

    def min(self, name: str) -> float:
        return min(self.seconds[name])

    def median(self, name: str) -> float:
        return statistics.median(self.seconds[name])

    def cell(self, name: str, per: float = 1.0) -> str:
        """"min / median" seconds, divided by ``per``."""
        return f"{self.min(name) / per:.2f} / {self.median(name) / per:.2f}"

    def ratio(self, name: str, baseline: str) -> str:
        """min/min and median/median of ``name`` over ``baseline``."""
        return f"{self.min(name) / self.min(baseline):.2f} / {self.median(name) / self.median(baseline):.2f}"


def interleaved(timings: Timings, runs: dict[str, Callable[[], Any]], reps: int) -> None:
    """Each configuration ``reps`` times, round-robin (after one untimed warm-up of the first)."""
    next(iter(runs.values()))()
    for _ in range(reps):
        for name, fn in runs.items():
            timings.run(name, fn)
            print(f"  {name}: {timings.seconds[name][-1]:.2f} s", flush=True)


def agreement(masks: list[TargetMask], reference: list[TargetMask], shape) -> str:
    """'=' when every mask equals its reference bit for bit, else the voxels that differ (all
    targets together) and the smallest Dice."""
    by_key = {m.key: m for m in reference}
    differ, worst = 0, 1.0
    for mask in masks:
        mine, theirs = mask.full(shape), by_key[mask.key].full(shape)
        differ += int(np.count_nonzero(mine != theirs))
        worst = min(worst, array_dice(mine, theirs))
    return "= (bit for bit)" if not differ else f"{differ} voxels differ, Dice >= {worst:.5f}"


def cpu_name() -> str:
    """The CPU's model name and its bf16 instructions (from /proc/cpuinfo where there is one)."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:
        return platform.processor() or platform.machine()
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    extras = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(extras) or 'no native bf16'})"


# --------------------------------------------------------------------------------------------
# 1-2. The engine


def monai_masks(image: sitk.Image, model: LoadedModel, keys: list[str], batch_size: int) -> list[TargetMask]:
    """Baseline (b): our preprocessing without the body crop, MONAI's sliding window in float32, the
    same task query (every CT task, the asked ones' logits kept) and the same mapping back."""
    from monai.inferers import sliding_window_inference

    entry = model.modality_entry("CT")
    window = tuple(model.manifest["input"]["window_size_zyx"])
    ms = to_model_space(image, spacing_zyx=model.manifest["input"]["spacing_zyx_mm"],
                        normalization=entry["normalization"], crop_to_body=False, modality="CT")
    query = model.query("CT")
    tasks = torch.tensor([query])
    outputs = [query.index(model.task_index(k, "CT")) for k in keys]
    slot = torch.tensor([[entry["slot"]]])
    # As a MONAI user runs it: our engine switched the shared network to channels-last; undo that.
    network = model.network.eval().to(memory_format=torch.contiguous_format)

    def predictor(x: torch.Tensor) -> torch.Tensor:
        return network(x, tasks.expand(x.shape[0], -1), slot.expand(x.shape[0], -1))[0][:, outputs]

    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(ms.array)[None, None], window, batch_size, predictor,
                                          overlap=0.5, mode="gaussian", cval=float(ms.array.min()))
        probabilities = (torch.sigmoid(logits[0]) * 255).round().to(torch.uint8).numpy()
    reference = reference_geometry(image)
    masks = []
    for number, key in enumerate(keys):
        crop = probabilities_to_mask(probabilities[number], ms, reference)
        masks.append(TargetMask(key, key, (0, 0, 0), "", crop.offset_zyx, crop.array))
    return masks


def engine_sections(image: sitk.Image, model: LoadedModel, reps: int) -> tuple[list[str], dict[str, Any]]:
    keys = model.targets_for("CT")
    shape = image.GetSize()[::-1]

    def ours(targets, **options):
        return segment_image(image, modality="CT", targets=list(targets), model=model, device="cpu",
                             postprocess=NO_CLEANUP, **options)

    batch_size = 2  # the engine's choice for the demo model on a CPU (inference.choose_batch_size)
    timings = Timings()
    print(f"sections 1-2: {reps} repetitions of 7 runs", flush=True)
    interleaved(timings, {
        "a": lambda: ours(keys, target_windows=False),
        "c": lambda: ours(keys, target_windows=False, precision="float32"),
        "b": lambda: monai_masks(image, model, keys, batch_size),
        "one": lambda: ours([ONE_TARGET]),
        "one full": lambda: ours([ONE_TARGET], target_windows=False),
        "region": lambda: ours(REGION),
        "all": lambda: ours(keys),
    }, reps)
    first = timings.first
    precision = first["a"].precision
    lines = [
        f"**1. Engine vs MONAI** ({len(keys)} CT targets, {first['a'].windows['lattice']} windows of "
        f"{'x'.join(map(str, model.manifest['input']['window_size_zyx']))}, batch {batch_size}; seconds per CT, min / "
        "median; ratio: min/min / median/median)",
        "",
        "| run | s per CT | MONAI (b) takes | masks vs MONAI (b) |",
        "|---|---:|---:|---|",
        f"| (a) ours, {precision} (the default here) | {timings.cell('a')} | {timings.ratio('b', 'a')} "
        f"| {agreement(first['a'].masks, first['b'], shape)} |",
        f"| (c) ours, float32 | {timings.cell('c')} | {timings.ratio('b', 'c')} "
        f"| {agreement(first['c'].masks, first['b'], shape)} |",
        f"| (b) MONAI sliding_window_inference, float32 | {timings.cell('b')} | 1.00 / 1.00 | — |",
        "",
        f"**2. Only the windows the asked targets need** (the default) vs every window (`--no-target-windows`; "
        f"with the fixed task query a full run costs the same whatever is asked), {precision}",
        "",
        "| asked | windows run / lattice | s per CT | time vs every window | masks vs every window |",
        "|---|---:|---:|---:|---|",
    ]
    for name, label, baseline in (("one", f"one target ({ONE_TARGET})", "one full"),
                                  ("region", f"a region ({', '.join(REGION)})", "a"),
                                  ("all", f"every target ({len(keys)})", "a")):
        result = first[name]
        lines.append(f"| {label} | {result.windows['windows']} / {result.windows['lattice']} | {timings.cell(name)} "
                     f"| {timings.ratio(name, baseline)} | {agreement(result.masks, first['a'].masks, shape)} |")
    lines.append(f"| every window, one target ({ONE_TARGET}) | {first['one full'].windows['windows']} / "
                 f"{first['one full'].windows['lattice']} | {timings.cell('one full')} | "
                 f"{timings.ratio('one full', 'a')} (vs every target) | "
                 f"{agreement(first['one full'].masks, first['a'].masks, shape)} |")
    return lines, {"precision": precision}


def hermes_r_windows(image: sitk.Image, labels: sitk.Image, values: dict[str, int]) -> dict[str, tuple[int, int]]:
    """Windows a run near the asked targets needs with Hermes-R's geometry (128^3 at 1.5 mm, overlap
    0.5, the body crop), from the phantom's true organs standing for what the coverage pass finds:
    asked -> (windows run, lattice windows). Counted as inference.predict_volume plans them."""
    window, margin = (128, 128, 128), 128 // 8
    ms = to_model_space(image, spacing_zyx=(1.5, 1.5, 1.5), normalization={"method": "clip_zscore",
                        "clip": [-991, 500]}, modality="CT", window_lattice=(window, 0.5))
    truth = resample_label(labels, ms)
    lattice = window_starts(truth.shape, window, 0.5)
    cover = covering_corners(truth.shape, window, 0.5)
    counts = {}
    for name, keys in ((ONE_TARGET, [ONE_TARGET]), ("six abdominal organs", ABDOMEN), ("every target", list(values))):
        found = np.isin(truth, [values[k] for k in keys])
        near = corners_near(found, lattice, window, margin)
        counts[name] = (len(cover) + len(set(near) - set(cover)), len(lattice))
    return counts


def windows_table(counts: dict[str, tuple[int, int]], hermes: dict[str, Any] | None) -> list[str]:
    """Section 2 with Hermes-R's geometry: windows run and, with ``--hermes-r``, network seconds per CT."""
    backends = list(hermes["per_window"]) if hermes else []
    lines = ["**2b. The same with Hermes-R's geometry** (128^3 windows at 1.5 mm, overlap 0.5, the body crop) on "
             "the section-5 CT, windows counted from the phantom's true organs (standing for what the coverage "
             "pass finds; margin 16 voxels)"
             + ("; network seconds per CT = windows x the per-window time of section 3 (min / median)"
                if hermes else " (`--hermes-r` adds the network time per CT)"),
             "",
             "| asked | windows run / lattice | vs every window |" + "".join(f" {b} s per CT |" for b in backends),
             "|---|---:|---:|" + "---:|" * len(backends)]
    for name, (run, lattice) in counts.items():
        cells = "".join(f" {run * hermes['per_window'][b][0]:.0f} / {run * hermes['per_window'][b][1]:.0f} |"
                        for b in backends) if hermes else ""
        lines.append(f"| {name} | {run} / {lattice} | {lattice / run:.2f}x fewer |{cells}")
    return lines


# --------------------------------------------------------------------------------------------
# 3-4. The network: torch vs OpenVINO, share of the peak


class Peak:
    """The best matrix-product rate of this CPU (GFLOP/s, 2 n^3 per n x n product, n = 2048) per
    precision, measured inside every repetition of the network sections, so that a busy moment
    does not set it."""

    def __init__(self, n: int = 2048) -> None:
        self.n = n
        self.best: dict[str, float] = {}
        self._operands: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def measure(self, dtype: torch.dtype) -> None:
        name = precision_name(dtype)
        if name not in self._operands:
            self._operands[name] = (torch.randn(self.n, self.n).to(dtype), torch.randn(self.n, self.n).to(dtype))
            torch.mm(*self._operands[name])
        seconds = min(_seconds(lambda: torch.mm(*self._operands[name])) for _ in range(3))
        self.best[name] = max(self.best.get(name, 0.0), 2 * self.n**3 / seconds / 1e9)


def _seconds(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def flops_per_window(network: torch.nn.Module, window: tuple[int, int, int], tasks: int) -> float:
    """Multiply-adds x 2 of one forward pass on one window, counted on a weightless copy (meta)."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(network).to("meta")
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        meta(torch.zeros(1, 1, *window, device="meta"), torch.zeros(1, tasks, dtype=torch.long, device="meta"),
             torch.zeros(1, 1, dtype=torch.long, device="meta"))
    return float(counter.get_total_flops())


def network_sections(label: str, hermes: HermesPredictor, windows: torch.Tensor, reps: int, calls: int,
                     peak: Peak) -> dict[str, Any]:
    """Sections 3 and 4 for one network: torch vs OpenVINO per window (``calls`` passes on ``windows``
    per repetition), the arithmetic per window, and ``peak`` measured in every repetition."""
    depth, height, width = windows.shape[2:]
    window = (depth, height, width)
    batch = windows.shape[0]
    dtype = compute_dtype(CPU, "auto")
    torch_predictor = hermes.to(CPU)
    flops = flops_per_window(hermes.network, window, len(hermes.task_indices))
    runs: dict[str, Callable[[], Any]] = {"torch": lambda: [torch_predictor(windows) for _ in range(calls)]}
    skipped, convert_s = None, None
    if openvino_backend.is_available():
        started = time.perf_counter()
        openvino = openvino_backend.OpenVinoPredictor(hermes, window)
        convert_s = time.perf_counter() - started
        runs["OpenVINO"] = lambda: [openvino(windows) for _ in range(calls)]
    else:
        skipped = "OpenVINO is not installed (`pip install openvino`)"

    def measure_peak() -> None:
        for peak_dtype in {dtype or torch.float32, torch.float32}:
            peak.measure(peak_dtype)

    runs["peak"] = measure_peak
    timings = Timings()
    print(f"sections 3-4, {label}: {reps} repetitions of {calls} x {batch} windows per backend", flush=True)
    with torch.inference_mode():
        interleaved(timings, runs, reps)
    per = calls * batch
    backends = [name for name in runs if name != "peak"]
    agreement = {}
    for name in backends[1:]:
        ours, theirs = timings.first[name][0], timings.first["torch"][0]
        agreement[name] = (f"max abs. logit difference {float((ours - theirs).abs().max()):.2f} (logits up to "
                           f"{float(theirs.abs().max()):.0f}); Dice of logit >= 0: "
                           f"{array_dice((ours >= 0).numpy(), (theirs >= 0).numpy()):.4f}")
    return {"label": label, "timings": timings, "backends": backends, "per": per, "flops": flops,
            "agreement": agreement, "skipped": skipped, "precision": precision_name(dtype), "gflop": flops / 1e9,
            "per_window": {name: (timings.min(name) / per, timings.median(name) / per) for name in backends},
            "convert_s": convert_s, "window": window, "batch": batch, "tasks": len(hermes.task_indices)}


def network_rows(section: dict[str, Any], peak: Peak) -> list[str]:
    """Table rows of one network's sections 3-4; the share is of the best peak of the whole run."""
    timings, per, best = section["timings"], section["per"], peak.best[section["precision"]]
    rows = []
    for name in section["backends"]:
        achieved = section["flops"] / (timings.min(name) / per) / 1e9
        rows.append(f"| {section['label']} | {name} | {timings.cell(name, per)} | {timings.ratio(name, 'torch')} "
                    f"| {achieved:.0f} | {100 * achieved / best:.0f}% | {section['agreement'].get(name, '—')} |")
    if section["skipped"]:
        rows.append(f"| {section['label']} | OpenVINO | skipped: {section['skipped']} | | | | |")
    return rows


def demo_windows(image: sitk.Image, model: LoadedModel, batch: int) -> torch.Tensor:
    """``batch`` windows cut from the middle of the CT's model-space volume, (B, 1, *window)."""
    entry = model.modality_entry("CT")
    window = model.manifest["input"]["window_size_zyx"]
    array = to_model_space(image, spacing_zyx=model.manifest["input"]["spacing_zyx_mm"],
                           normalization=entry["normalization"], modality="CT").array
    array = np.pad(array, [(0, max(0, w - n)) for n, w in zip(array.shape, window)], constant_values=float(array.min()))
    centre = [(n - w) // 2 for n, w in zip(array.shape, window)]
    crops = []
    for number in range(batch):  # a quarter window apart along z, within the volume
        z = min(centre[0] + number * window[0] // 4, array.shape[0] - window[0])
        crops.append(array[z:z + window[0], centre[1]:centre[1] + window[1], centre[2]:centre[2] + window[2]])
    return torch.from_numpy(np.stack(crops)[:, None].copy())


def hermes_r_predictor() -> HermesPredictor:
    """A Hermes-R-sized network with random weights and the canonical CT query (45 tasks)."""
    torch.manual_seed(0)
    tasks = sorted(t.index for t in vocabulary.hermes_r_tasks() if "CT" in t.default_for)
    return HermesPredictor(HermesNetwork(HERMES_R).eval(), tasks, 0)


# --------------------------------------------------------------------------------------------
# 5. The input-grid stages


def antialias_one_thread(image: sitk.Image, spacing_xyz: np.ndarray) -> sitk.Image:
    """Baseline: the anti-aliasing before issue 16, one pass per axis over the whole volume, one thread."""
    direction = np.abs(np.asarray(image.GetDirection()).reshape(3, 3))
    factors = (direction.T @ spacing_xyz) / np.asarray(image.GetSpacing())
    array = sitk.GetArrayViewFromImage(image).astype(np.float32)
    for axis_xyz, factor in enumerate(factors):
        if factor > 1.5:
            ndimage.gaussian_filter1d(array, (factor - 1) / 2, axis=2 - axis_xyz, output=array, mode="nearest",
                                      truncate=3.0)
    smoothed = sitk.GetImageFromArray(array)
    smoothed.CopyInformation(image)
    return smoothed


def largest_piece_scipy(mask: np.ndarray) -> np.ndarray:
    """Baseline: the organ clean-up before issue 16 (scipy's 26-connected labels, the largest kept)."""
    out = mask.copy()
    box = bounding_box(out, margin=1)
    labels, count = ndimage.label(out[box], structure=np.ones((3, 3, 3), dtype=bool))
    if count:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        keep = np.zeros(count + 1, dtype=bool)
        keep[int(np.argmax(sizes))] = True
        out[box] = keep[labels]
    return out


def input_grid_section(image: sitk.Image, labels: sitk.Image, values: dict[str, int], model: LoadedModel,
                       reps: int) -> list[str]:
    spacing_xyz = np.asarray(model.manifest["input"]["spacing_zyx_mm"], dtype=float)[::-1]
    label_array = sitk.GetArrayViewFromImage(labels)
    spacing_zyx = image.GetSpacing()[::-1]
    organs = [key for key in values if vocabulary.target(key).single_piece]
    crops = []
    for key in organs:  # each organ on its box plus a voxel, as probabilities_to_mask gives it
        mask = label_array == values[key]
        box = bounding_box(mask, margin=1)
        if box is not None:
            crops.append(np.ascontiguousarray(mask[box]))
    one_piece = PostprocessOptions(keep_largest=True)
    timings = Timings()
    print(f"section 5: {reps} repetitions on {'x'.join(map(str, image.GetSize()))} voxels", flush=True)
    interleaved(timings, {
        "antialias after": lambda: sitk.GetArrayFromImage(model_space._antialias(image, spacing_xyz)),
        "antialias before": lambda: sitk.GetArrayFromImage(antialias_one_thread(image, spacing_xyz)),
        "cleanup after": lambda: [clean_up(c, spacing_zyx, one_piece) for c in crops],
        "cleanup before": lambda: [largest_piece_scipy(c) for c in crops],
    }, reps)
    first = timings.first
    same_smooth = np.array_equal(first["antialias after"], first["antialias before"])
    same_pieces = all(np.array_equal(a, b) for a, b in zip(first["cleanup after"], first["cleanup before"]))
    voxels = sum(c.size for c in crops) / 1e6
    return [
        f"**5. Input-grid stages** on {'x'.join(map(str, image.GetSize()))} voxels at "
        f"{'x'.join(f'{s:g}' for s in image.GetSpacing())} mm (seconds, min / median)",
        "",
        "| stage | before (issue 16) | now | now vs before | results |",
        "|---|---:|---:|---:|---|",
        f"| anti-aliasing to {spacing_xyz[0]:g} mm (one thread, one pass per axis → slabs on {os.cpu_count()} "
        f"threads) | {timings.cell('antialias before')} | {timings.cell('antialias after')} | "
        f"{timings.ratio('antialias after', 'antialias before')} | {'= (bit for bit)' if same_smooth else 'DIFFER'} |",
        f"| organ clean-up, largest piece of {len(crops)} one-piece organs ({voxels:.0f} M voxels of boxes; "
        f"scipy → ITK labelling) | {timings.cell('cleanup before')} | {timings.cell('cleanup after')} | "
        f"{timings.ratio('cleanup after', 'cleanup before')} | {'= (bit for bit)' if same_pieces else 'DIFFER'} |",
    ]


# --------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each configuration (>= 3)")
    parser.add_argument("--hermes-r", action="store_true", help="also time a Hermes-R-sized network per window")
    parser.add_argument("--write", type=Path, help="add the tables to this Markdown file, newest first")
    args = parser.parse_args()
    if args.reps < 3:
        parser.error("--reps must be at least 3 (min and median of at least three)")
    scale = SCALES[args.scale]
    started, load_before = time.perf_counter(), os.getloadavg()[0]

    model = load(MODEL)
    big, big_labels, values = ct_phantom(scale.grid_size_xyz, scale.grid_spacing_xyz, max_voxels=8_000_000)
    small, _, _ = ct_phantom(scale.network_size_xyz, scale.network_spacing_xyz, max_voxels=4_000_000)

    engine, facts = engine_sections(small, model, args.reps)
    peak = Peak()
    demo = model.predictor(model.query("CT"), model.modality_entry("CT")["slot"])
    sections = [network_sections(f"{model.name} ({model.manifest['version']})", demo,
                                 demo_windows(small, model, 2), args.reps, calls=3, peak=peak)]
    if args.hermes_r:
        sections.append(network_sections("Hermes-R size, random weights", hermes_r_predictor(),
                                         torch.randn(1, 1, 128, 128, 128), args.reps, calls=1, peak=peak))
    grid = input_grid_section(big, big_labels, values, model, args.reps)
    hermes_windows = windows_table(hermes_r_windows(big, big_labels, values), sections[1] if args.hermes_r else None)
    notes = [f"{section['label']}: {section['gflop']:.1f} GFLOP per {'x'.join(map(str, section['window']))} window "
             f"with {section['tasks']} tasks, batch {section['batch']}"
             + (f", OpenVINO conversion {section['convert_s']:.0f} s" if section["convert_s"] is not None else "")
             for section in sections]
    peaks = ", ".join(f"{rate:.0f} GFLOP/s in {name}" for name, rate in peak.best.items())
    lines = [
        f"### CPU benchmark, one run — {datetime.date.today().isoformat()}",
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} CPU cores, torch threads: {torch.get_num_threads()}; load average "
        f"{load_before:.1f} at the start and {os.getloadavg()[0]:.1f} at the end (shared: the ratios are the point), "
        f"torch {torch.__version__}, OpenVINO "
        f"{_openvino_version()}. Command: `python benchmarks/bench_inference.py --scale {scale.name}"
        f"{' --hermes-r' if args.hermes_r else ''}` ({time.perf_counter() - started:.0f} s); {args.reps} "
        f"repetitions of each run, interleaved; min / median.",
        f"Network sections: the phantom CT on {'x'.join(map(str, small.GetSize()))} voxels at "
        f"{'x'.join(f'{s:g}' for s in small.GetSpacing())} mm, model `{model.name}` {model.manifest['version']} "
        f"(window {'x'.join(map(str, model.manifest['input']['window_size_zyx']))} at "
        f"{model.manifest['input']['spacing_zyx_mm'][0]:g} mm), overlap 0.5, Gaussian blending.",
        "",
        *engine,
        "",
        *hermes_windows,
        "",
        f"**3-4. torch vs OpenVINO per window, and the share of this CPU's peak** ({facts['precision']}; the peak: "
        f"the best n = 2048 matrix product of this run, {peaks}; {'; '.join(notes)})",
        "",
        "| network | backend | s per window | vs torch | GFLOP/s | share of the peak | output vs torch |",
        "|---|---|---:|---:|---:|---:|---|",
        *(row for section in sections for row in network_rows(section, peak)),
        "",
        *grid,
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        add_newest_first(args.write, text)
    return 0


def _openvino_version() -> str:
    if not openvino_backend.is_available():
        return "not installed"
    import openvino

    return openvino.get_version().split("-")[0]


if __name__ == "__main__":
    sys.exit(main())
