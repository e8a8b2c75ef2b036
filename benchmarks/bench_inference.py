"""Benchmark: our inference engine against MONAI's sliding_window_inference, same process.

Usage: python benchmarks/bench_inference.py [--model hermes-demo] [--device cpu] [--write docs/benchmarks.md]

On a generated CT-like volume of 512 x 512 x 300 voxels at 0.8 x 0.8 x 2.5 mm (a phantom torso
filling about half of the field of view), the same network and weights run through
  (a) segment_image as shipped: body crop (the lattice windows that touch the body box) +
      bounded-memory sliding window in the default precision (bf16 on CPUs with native bf16) +
      per-target crop back to the input grid;
  (b) MONAI: the same model-space volume without our crop, sliding_window_inference with the
      same window, overlap (0.5) and Gaussian blending in float32, sigmoid, the same mapping back;
  (c) our engine in float32 (`--precision float32`), to separate the engine from the precision;
  (d) our engine without the body crop (`--no-body-crop`): the very windows of (b).
Our runs skip the post-processing (side constraint, organs in one piece: not part of the engine),
so that all four map back the same way.
It prints time ratios against (a), peak memory above the start of each run (RSS sampled every
10 ms), the Dice of each of our runs' masks against (b) and of (a) and (b) against the phantom's
truth, our time for one target vs all targets, and the peak RSS of the whole
`hermes-segment segment` command in a child process.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HermesSegment"))

from HermesSegmentLib.inference import compute_dtype, precision_name, select_device  # noqa: E402
from HermesSegmentLib.models import load  # noqa: E402
from HermesSegmentLib.pipeline import DEFAULT_MODEL, segment_image  # noqa: E402
from HermesSegmentLib.postprocess import PostprocessOptions  # noqa: E402
from HermesSegmentLib.postprocess.to_input_grid import probabilities_to_mask, reference_geometry  # noqa: E402
from HermesSegmentLib.preprocess import to_model_space  # noqa: E402
from HermesSegmentLib.phantoms import generate_case  # noqa: E402
from HermesSegmentLib.evaluation import dice as array_dice  # noqa: E402


class PeakRSS:
    """Peak resident memory of this process above its value at entry, sampled in a thread."""

    def __enter__(self) -> "PeakRSS":
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def delta_gb(self) -> float:
        return (self.peak - self.start) / 2**30

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as stream:
            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def ct_volume(size=(512, 512, 300), spacing=(0.8, 0.8, 2.5), seed: int = 7) -> tuple[sitk.Image, dict[str, np.ndarray]]:
    """A phantom CT resampled onto an exact grid (default 512 x 512 x 300 at 0.8 x 0.8 x 2.5 mm, LPS),
    and its true masks (target -> bool [z, y, x])."""
    image, labels, info = generate_case(seed, "CT", spacing=spacing, orientation="LPS",
                                        max_voxels=int(np.prod(size)) * 2, supersample=False)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    origin = centre - (np.array(size) - 1) / 2 * np.array(spacing)
    grid = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    grid.SetOrigin(tuple(origin))
    grid.SetSpacing(spacing)
    image = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1000.0, sitk.sitkInt16)
    labels = sitk.GetArrayFromImage(sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    return image, {target: labels == value for target, value in info["labels"].items()}


def truth_dice(mask, truth: np.ndarray | None) -> str:
    return "—" if truth is None else f"{array_dice(mask.full(truth.shape), truth):.3f}"


def dice(a, b, shape) -> float:
    return array_dice(a.full(shape), b.full(shape))


def monai_masks(image, model, modality, keys, device, overlap):
    """Path (b): same preprocessing (no body crop) and mapping back, MONAI's sliding window in between."""
    from monai.inferers import sliding_window_inference

    from HermesSegmentLib.mask import TargetMask

    entry = model.modality_entry(modality)
    window = tuple(model.manifest["input"]["window_size_zyx"])
    ms = to_model_space(image, spacing_zyx=model.manifest["input"]["spacing_zyx_mm"],
                        normalization=entry["normalization"], crop_to_body=False, modality=modality)
    tasks = torch.tensor([[model.task_index(k, modality) for k in keys]], device=device)
    slot = torch.tensor([[entry["slot"]]], device=device)
    # As a MONAI user runs it: our engine switched the shared network to channels-last; undo that.
    network = model.network.to(device).eval().to(memory_format=torch.contiguous_format)

    def predictor(x):
        return network(x, tasks.expand(x.shape[0], -1), slot.expand(x.shape[0], -1))[0]

    started = time.perf_counter()
    with torch.inference_mode():
        logits = sliding_window_inference(torch.from_numpy(ms.array)[None, None].to(device), window, 2, predictor,
                                          overlap=overlap, mode="gaussian", cval=float(ms.array.min()))
        probabilities = (torch.sigmoid(logits[0]) * 255).round().to(torch.uint8).cpu().numpy()
    inference = time.perf_counter() - started
    del logits
    reference = reference_geometry(image)
    masks = []
    for number, key in enumerate(keys):
        crop = probabilities_to_mask(probabilities[number], ms, reference)
        masks.append(TargetMask(key, key, (0, 0, 0), "", crop.offset_zyx, crop.array))
    return masks, inference


def timed(fn):
    with PeakRSS() as memory:
        started = time.perf_counter()
        value = fn()
        seconds = time.perf_counter() - started
    return value, seconds, memory.delta_gb


def peak_rss_of_command(command: list[str]) -> tuple[float, float]:
    """(peak RSS in GB, seconds) of a child process, from its own VmHWM.

    getrusage(RUSAGE_CHILDREN) would also count the parent's pages that the child shares between
    fork and exec, so the child's high-water mark is read from /proc while it runs.
    """
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "HermesSegment")}
    started = time.perf_counter()
    child = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    peak_kb = 0
    while child.poll() is None:
        try:
            with open(f"/proc/{child.pid}/status") as stream:
                line = next(l for l in stream if l.startswith("VmHWM:"))
            peak_kb = max(peak_kb, int(line.split()[1]))
        except (OSError, StopIteration):
            pass
        time.sleep(0.05)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, command)
    return peak_kb / 2**20, time.perf_counter() - started


def command_peak_rss_gb(path: Path, model: str, device: str) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as out:
        return peak_rss_of_command([sys.executable, "-m", "HermesSegmentLib.cli", "segment", str(path),
                                    "--modality", "CT", "--model", model, "--out", out, "--device", device])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 300), metavar=("X", "Y", "Z"),
                        help="volume size in voxels (default 512 512 300; smaller for a quick check)")
    parser.add_argument("--write", type=Path, help="append the table to this Markdown file")
    args = parser.parse_args()

    device = select_device(args.device)
    image, truth = ct_volume(tuple(args.size), (0.8 * 512 / args.size[0], 0.8 * 512 / args.size[1], 2.5 * 300 / args.size[2]))
    model = load(args.model)
    keys = model.targets_for("CT")
    shape = image.GetSize()[::-1]
    print(f"volume {image.GetSize()} at {image.GetSpacing()} mm; model {model.name}; {len(keys)} CT targets; {device}")

    def ours(targets, crop_to_body=True, precision="auto"):  # engines compared: no post-processing, as in (b)
        return segment_image(image, modality="CT", targets=targets, model=model, device=str(device),
                             crop_to_body=crop_to_body, precision=precision,
                             postprocess=PostprocessOptions(side_constraint=False, single_piece=False))

    ours(keys[:1])  # warm-up: first-call allocations and kernels
    (result, t_ours, m_ours) = timed(lambda: ours(keys))
    (_, t_one, _) = timed(lambda: ours(keys[:1]))
    (full, t_full, m_full) = timed(lambda: ours(keys, precision="float32"))
    (whole, t_whole, m_whole) = timed(lambda: ours(keys, crop_to_body=False))
    ((masks_b, infer_b), t_b, m_b) = timed(lambda: monai_masks(image, model, "CT", keys, device, 0.5))
    infer_ours = result.seconds["inference"]
    precision = precision_name(compute_dtype(device, "auto"))

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ct.nrrd"
        sitk.WriteImage(image, str(path))
        cmd_rss, cmd_seconds = command_peak_rss_gb(path, args.model, str(device))

    lines = [
        f"### Inference engine vs MONAI — {datetime.date.today().isoformat()}",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
        f"device {device}. Command: `python benchmarks/bench_inference.py --model {args.model} --device {args.device}`.",
        f"Volume: {'x'.join(map(str, image.GetSize()))} at {'x'.join(f'{s:.2f}' for s in image.GetSpacing())} mm (phantom CT); model `{model.name}` "
        f"(window {'x'.join(map(str, model.manifest['input']['window_size_zyx']))} at "
        f"{model.manifest['input']['spacing_zyx_mm'][0]} mm); {len(keys)} targets; overlap 0.5, Gaussian blending; "
        f"default precision here: {precision}.",
        "",
        "| run | total s | inference s | time ratio vs (a) | peak RSS above start, GB |",
        "|---|---:|---:|---:|---:|",
        f"| (a) ours, all targets ({precision}) | {t_ours:.1f} | {infer_ours:.1f} | 1.00 | {m_ours:.2f} |",
        f"| (b) MONAI sliding_window_inference (float32) | {t_b:.1f} | {infer_b:.1f} | {t_b / t_ours:.2f} | {m_b:.2f} |",
        f"| (c) ours in float32 (`--precision float32`) | {t_full:.1f} | {full.seconds['inference']:.1f} "
        f"| {t_full / t_ours:.2f} | {m_full:.2f} |",
        f"| (a) ours, 1 target ({keys[0]}) | {t_one:.1f} | | {t_one / t_ours:.2f} | |",
        f"| (d) ours without the body crop (`--no-body-crop`) | {t_whole:.1f} | {whole.seconds['inference']:.1f} "
        f"| {t_whole / t_ours:.2f} | {m_whole:.2f} |",
        "",
        f"All targets cost {t_ours / t_one:.2f}x one target. MONAI (b) takes {t_b / t_ours:.2f}x the time of (a), "
        f"{t_b / t_full:.2f}x that of (c) (same precision) and {t_b / t_whole:.2f}x that of (d) (same windows). "
        f"Whole `hermes-segment segment` command: {cmd_seconds:.1f} s, peak RSS {cmd_rss:.2f} GB.",
        "",
        "| target | voxels (a) | Dice (a) vs (b) | Dice (c) vs (b) | Dice (d) vs (b) | Dice vs phantom truth: (a) | (b) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mine, theirs, float32, uncropped in zip(result.masks, masks_b, full.masks, whole.masks):
        lines.append(f"| {mine.key} | {mine.voxels} | {dice(mine, theirs, shape):.4f} | {dice(float32, theirs, shape):.4f} "
                     f"| {dice(uncropped, theirs, shape):.4f} "
                     f"| {truth_dice(mine, truth.get(mine.key))} | {truth_dice(theirs, truth.get(mine.key))} |")
    publish("\n".join(lines) + "\n", args.write)
    return 0


def publish(text: str, markdown: Path | None) -> None:
    """Print a result table and append it to a Markdown file when asked."""
    print(text)
    if markdown:
        with open(markdown, "a", encoding="utf-8") as stream:
            stream.write("\n" + text)


if __name__ == "__main__":
    sys.exit(main())
