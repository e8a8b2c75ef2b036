"""GPU benchmark: Hermes-R-sized inference on a 512 x 512 x 300 CT, one command, under 4 minutes.

    python benchmarks/bench_gpu.py --out DIR [--append docs/benchmarks.md] [--budget 210]
    python benchmarks/bench_gpu.py --smoke --out DIR     # tiny network, small CT: the check `make test` runs

Needs torch, numpy, scipy, safetensors, pyyaml, tqdm, SimpleITK and jsonschema; without the last two
only part 1 runs. Writes DIR/bench_gpu.json (raw figures, rewritten after every step) and
DIR/bench_gpu.md (the tables), prints the tables and adds them to ``--append`` (newest first). Runs on the GPU
when there is one (``--device auto``), else on the CPU.

Random weights throughout: times and memory are Hermes-R's (the released state dict's 405 tensors,
checked against Testing/reference at start), masks are not anatomy. The CT is the benchmarks'
phantom torso (benchmarks/phantom_ct.py) at 0.8 x 0.8 x 2.5 mm.

1. Network: one forward pass (autocast float16 / bfloat16, or float32) on a batch of 1, 2, 4 or 8
   windows of 128^3 with the 45 CT tasks Hermes-R offers, as the engine runs it (inference mode,
   float32 logits out), timed on the device (CUDA events) after a warm-up pass: ms per window,
   peak GPU memory (torch.cuda.max_memory_allocated) and seconds per CT (the CT's windows at that
   batch). Two variants of the engine's default: cudnn.benchmark on, channels-last 3D layout.
2. End to end through the CLI: `hermes-segment segment` (the installed command's module, a child
   process) on two copies of the CT with a Hermes-R-sized package and the six abdominal organs of
   the phantom, every option at its default. The second case is the steady state (the first pays
   for CUDA's start-up). Stage times come from the CLI's --progress-json lines, stamped as they
   arrive: read, to model space (resample, normalise, crop), inference (network, host<->device
   transfers, blending), back to the input grid with clean-up, writing .seg.nrrd.
3. The same stages with realistic masks: random weights paint noise over most of the body, which
   makes mapping back, clean-up and writing cost more than a trained model's organs do. Here
   segment_image runs with the network replaced by the phantom's true labels (an oracle), so
   those stages see anatomical masks; the network time comes from part 1.

Time budget (default 210 s): the network grid runs first, in order of importance, while a child
process makes the CT and the package on the CPU, but only as long as it leaves time for parts 2
and 3; then parts 2 and 3; then what is left of the grid, as far as the budget allows. A hard stop
at the budget plus 15 s keeps what was measured (the JSON is rewritten after every step). GPU memory: a
batch predicted (from a measured smaller batch) not to fit in the free memory is skipped; an
out-of-memory error is recorded and the grid goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HermesSegment"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from HermesSegmentLib import vocabulary
from HermesSegmentLib.inference import (
    autocast,
    available_memory_gb,
    choose_batch_size,
    compute_dtype,
    precision_name,
    select_device,
    window_memory_gb,
)
from HermesSegmentLib.network import HERMES_R, HermesConfig, HermesNetwork
from results_file import add_newest_first

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "HermesSegment"

REFERENCE = REPO / "Testing" / "reference" / "hermes_r_state_dict.tsv"
# The phantom's abdominal organs that Hermes-R offers for CT: what the CLI and the oracle segment.
TARGETS = ("liver", "spleen", "kidney_left", "kidney_right", "stomach", "aorta")
OVERLAP = 0.5  # the CLI's default
HARD_STOP_GRACE_S = 15.0
RESERVE_S = 4.0  # kept for writing the results
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": None}
# Activation memory per 128^3 window before anything was measured (Hermes-R on the CPU: 2.95 GB in
# float32, 1.56 GB in bf16 autocast; GPU kernels keep more workspace): only a first guess.
GUESS_GB_PER_WINDOW = {"float32": 4.0, "bfloat16": 2.5, "float16": 2.5}


@dataclass(frozen=True)
class Scale:
    """What is benchmarked: the grid, the network and the windows."""

    name: str
    size_xyz: tuple[int, int, int]
    spacing_xyz: tuple[float, float, float]
    phantom_voxels: int  # the phantom is rendered with this many voxels, then resampled onto the grid
    architecture: HermesConfig
    window: int
    model_spacing_mm: float
    batches: tuple[int, ...]
    min_timed_s: float  # timed repetitions of a configuration last at least this long (and >= 3)
    budget_s: float
    end_to_end_s: float  # what the CLI run and the anatomical-mask run are expected to need together


FULL = Scale("Hermes-R", (512, 512, 300), (0.8, 0.8, 2.5), 8_000_000, HERMES_R, 128, 1.5, (1, 2, 4, 8), 1.0,
             210.0, 120.0)
SMOKE = Scale("smoke (tiny network, small CT)", (64, 64, 40), (6.4, 6.4, 18.75), 100_000,
              HermesConfig(base_channels=8, blocks_per_stage=(1, 1, 1, 1), fusion_depths=(1, 1, 1, 1, 1),
                           modality_tokens=4, head_dim=16),
              32, 16.0, (1, 2), 0.0, 150.0, 60.0)


# --------------------------------------------------------------------------------------------
# Budget and results


class OutOfTime(Exception):
    """The hard stop: raised in the main thread by SIGALRM at budget + grace."""


class Budget:
    def __init__(self, seconds: float) -> None:
        self.limit = seconds
        self.started = time.perf_counter()
        self.skipped: list[str] = []
        if hasattr(signal, "setitimer"):
            signal.signal(signal.SIGALRM, self._stop)
            signal.setitimer(signal.ITIMER_REAL, seconds + HARD_STOP_GRACE_S)

    @staticmethod
    def _stop(signum, frame) -> None:
        raise OutOfTime()

    def used(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.limit - self.used()

    def allows(self, seconds: float, what: str, note: bool = True) -> bool:
        """Whether ``what`` (estimated ``seconds``) fits, keeping the reserve; notes it if not."""
        if self.left() - RESERVE_S >= seconds:
            return True
        if note:
            self.skipped.append(f"{what} (needs ~{seconds:.0f} s, {max(self.left(), 0):.0f} s left)")
        return False

    def close(self) -> None:
        if hasattr(signal, "setitimer"):
            signal.setitimer(signal.ITIMER_REAL, 0)


class Results:
    """Raw figures, rewritten to DIR/bench_gpu.json after every step (a killed run keeps them)."""

    def __init__(self, out: Path) -> None:
        self.path = out / "bench_gpu.json"
        self.data: dict[str, Any] = {"environment": {}, "volume": {}, "network": [], "cli": {}, "oracle": {},
                                     "errors": [], "budget": {}}

    def save(self) -> None:
        temporary = self.path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.data, indent=1, default=str), encoding="utf-8")
        os.replace(temporary, self.path)

    def error(self, where: str, error: BaseException) -> None:
        line = f"{where}: {type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        print(f"  ! {line}", file=sys.stderr)
        self.data["errors"].append({"where": where, "error": line,
                                    "trace": traceback.format_exception_only(type(error), error)[-1].strip()})
        self.save()


# --------------------------------------------------------------------------------------------
# Environment and the reference check


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(), "torch": torch.__version__, "cpu_cores": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(), "device": str(device),
    }
    for package in ("numpy", "scipy", "SimpleITK", "jsonschema", "safetensors"):
        try:
            env[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            env[package] = None
    if device.type == "cuda":
        index = device.index or 0
        props = torch.cuda.get_device_properties(index)
        env.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                   capability=".".join(map(str, torch.cuda.get_device_capability(index))),
                   cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                   bf16_supported=bool(torch.cuda.is_bf16_supported()),
                   tf32_convolutions=bool(torch.backends.cudnn.allow_tf32),
                   cudnn_benchmark=bool(torch.backends.cudnn.benchmark))
        with contextlib.suppress(Exception):
            env["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return env


def check_reference() -> dict[str, Any]:
    """Hermes-R as built here against the released state dict's names and shapes."""
    expected = {}
    for line in REFERENCE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            key, shape, _ = line.split("\t")
            expected[key] = tuple(int(n) for n in shape.split("x")) if shape else ()
    with torch.device("meta"):
        network = HermesNetwork(HERMES_R)
    mine = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    return {"tensors": len(mine), "parameters": sum(math.prod(s) for s in mine.values()),
            "matches_reference": mine == expected}


def ct_task_indices() -> list[int]:
    """The task rows of every CT target Hermes-R offers (the canonical CT query)."""
    return sorted(t.index for t in vocabulary.hermes_r_tasks() if "CT" in t.default_for)


# --------------------------------------------------------------------------------------------
# Part 1: the network


def device_seconds(device: torch.device, run: Callable[[], object]) -> float:
    """Seconds ``run`` keeps the device busy: CUDA events around it on a GPU (the host does not
    wait for kernels), the wall clock on the CPU. The stream is idle on return."""
    if device.type != "cuda":
        started = time.perf_counter()
        run()
        return time.perf_counter() - started
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000.0


@contextlib.contextmanager
def variant_settings(network: torch.nn.Module, device: torch.device, variant: str) -> Iterator[torch.memory_format]:
    """The layout and cuDNN setting of a variant; restored afterwards. ``default`` is the engine's:
    channels-last on the CPU only (inference.sliding_window._prepare)."""
    channels_last = device.type == "cpu" or variant == "channels-last"
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    benchmark_before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = variant == "cudnn.benchmark" or benchmark_before
    # (torch's type stubs lack Module.to's documented memory_format argument)
    network.to(memory_format=layout)  # type: ignore[call-overload]
    try:
        yield layout
    finally:
        torch.backends.cudnn.benchmark = benchmark_before
        network.to(memory_format=torch.channels_last_3d if device.type == "cpu"  # type: ignore[call-overload]
                   else torch.contiguous_format)


def measure_network(network: torch.nn.Module, device: torch.device, precision: str, batch: int, variant: str,
                    tasks: list[int], scale: Scale, warmups: int) -> dict[str, Any]:
    """Time one configuration: ``warmups`` untimed passes, then >= 3 timed ones (and >= min_timed_s)."""
    window = (scale.window,) * 3
    dtype = DTYPES[precision]
    row: dict[str, Any] = {"precision": precision, "batch": batch, "variant": variant, "tasks": len(tasks),
                           "window": scale.window}
    with variant_settings(network, device, variant) as layout:
        images = torch.randn(batch, 1, *window, device=device).contiguous(memory_format=layout)
        task_indices = torch.tensor(tasks, device=device)[None].expand(batch, -1)
        modality = torch.zeros(batch, 1, dtype=torch.long, device=device)
        outputs: list[torch.Tensor] = []

        def forward() -> None:
            with autocast(device, dtype):
                logits, _ = network(images, task_indices, modality)
            outputs[:] = [logits.float()]  # the engine blends float32 logits

        with torch.inference_mode():
            for _ in range(warmups):
                device_seconds(device, forward)
            row["finite"] = bool(torch.isfinite(outputs[0]).all())
            outputs.clear()
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds: list[float] = []
            while len(seconds) < 3 or (sum(seconds) < scale.min_timed_s and len(seconds) < 12):
                seconds.append(device_seconds(device, forward))
                outputs.clear()
    row["seconds_per_batch"] = [round(s, 5) for s in seconds]
    row["ms_per_window_min"] = 1000 * min(seconds) / batch
    row["ms_per_window_median"] = 1000 * statistics.median(seconds) / batch
    if device.type == "cuda":
        row["peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        row["peak_reserved_gb"] = torch.cuda.max_memory_reserved(device) / 2**30
    return row


def predicted_peak_gb(rows: list[dict[str, Any]], precision: str, batch: int, weights_gb: float,
                      window: int) -> float:
    """Peak GPU memory of a batch, from the largest measured batch of the same precision (activation
    memory grows linearly with the batch), +15%; from a first guess when none was measured."""
    measured = [r for r in rows if r["precision"] == precision and r.get("peak_gb") and r["variant"] == "default"]
    if measured:
        row = max(measured, key=lambda r: r["batch"])
        per_window = (row["peak_gb"] - weights_gb) / row["batch"]
    else:
        per_window = GUESS_GB_PER_WINDOW[precision] * (window / 128) ** 3
    return weights_gb + 1.15 * per_window * batch


def estimated_seconds(rows: list[dict[str, Any]], precision: str, batch: int, variant: str) -> float:
    """A configuration's cost: warm-up plus >= 3 timed passes, from what was measured so far."""
    same = [r for r in rows if r["precision"] == precision and "ms_per_window_median" in r]
    any_row = [r for r in rows if "ms_per_window_median" in r]
    if same:
        per_window = min(r["ms_per_window_median"] for r in same) / 1000
    elif any_row:
        per_window = 2.5 * min(r["ms_per_window_median"] for r in any_row) / 1000  # float32 is the slow one
    else:
        return 20.0
    passes = 5 if variant == "cudnn.benchmark" else 4  # autotuning makes the warm-up slower
    return max(1.5 * passes * per_window * batch, 0.5) + 1.0


def grid(scale: Scale, device: torch.device, default_precision: str, default_batch: int) -> list[tuple[str, int, str]]:
    """(precision, batch, variant) in order of importance: the engine's default first, then its batch
    in the other precisions, the two variants, then the other batches."""
    precisions = ["bfloat16", "float16", "float32"] if device.type == "cuda" else ["bfloat16", "float32"]
    precisions.sort(key=lambda p: p != default_precision)
    order = [(default_precision, default_batch, "default")]
    order += [(p, default_batch, "default") for p in precisions if p != default_precision]
    if device.type == "cuda":
        order += [(default_precision, default_batch, variant) for variant in ("cudnn.benchmark", "channels-last")]
    for precision in precisions:
        order += [(precision, b, "default") for b in sorted({*scale.batches, default_batch}) if b != default_batch]
    return order


def run_network_config(results: Results, budget: Budget, network: torch.nn.Module, device: torch.device,
                       config: tuple[str, int, str], tasks: list[int], scale: Scale, weights_gb: float,
                       keep_s: float) -> None:
    """Measure one configuration if the budget allows it and ``keep_s`` more; record it, its skip
    reason or its error. A configuration skipped for time is not recorded (it may run later)."""
    precision, batch, variant = config
    name = f"{precision} batch {batch} {variant}"
    rows = results.data["network"]
    if device.type == "cuda" and precision == "bfloat16" and not torch.cuda.is_bf16_supported():
        rows.append({"precision": precision, "batch": batch, "variant": variant, "skipped": "no bf16 on this GPU"})
        return
    if device.type == "cuda":
        torch.cuda.empty_cache()
        free, _ = torch.cuda.mem_get_info(device)
        need = predicted_peak_gb(rows, precision, batch, weights_gb, scale.window)
        if need - torch.cuda.memory_allocated(device) / 2**30 > 0.9 * free / 2**30:
            rows.append({"precision": precision, "batch": batch, "variant": variant,
                         "skipped": f"predicted {need:.1f} GB > free {free / 2**30:.1f} GB"})
            results.save()
            return
    if not budget.allows(estimated_seconds(rows, precision, batch, variant) + keep_s, name, note=keep_s == 0):
        return
    print(f"network: {name} ...", file=sys.stderr, flush=True)
    warmups = 2 if not any("ms_per_window_median" in r for r in rows) else 1
    try:
        row = measure_network(network, device, precision, batch, variant, tasks, scale, warmups)
    except OutOfTime:
        raise
    except Exception as error:  # one configuration failing (OOM, cuDNN) must not end the grid
        oom = isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()
        rows.append({"precision": precision, "batch": batch, "variant": variant,
                     "skipped": "out of memory" if oom else f"{type(error).__name__}: {str(error)[:200]}"})
        if not oom:
            results.error(name, error)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        results.save()
        return
    rows.append(row)
    print(f"  {row['ms_per_window_median']:.1f} ms per window" +
          (f", peak {row['peak_gb']:.1f} GB" if "peak_gb" in row else ""), file=sys.stderr, flush=True)
    results.save()


# --------------------------------------------------------------------------------------------
# Inputs: the CT, its truth and a Hermes-R-sized package, made in a child process


def prepare(work: Path, scale: Scale) -> None:
    """Write ct_a.nrrd and ct_b.nrrd (the same CT), the package, oracle.npy and prepared.json."""
    import numpy as np
    import SimpleITK as sitk

    from HermesSegmentLib.inference.windows import window_starts
    from HermesSegmentLib.models import save
    from HermesSegmentLib.models.manifest import CT_NORMALIZATION, hermes_r_manifest
    from HermesSegmentLib.preprocess import to_model_space
    from phantom_ct import ct_phantom

    started = time.perf_counter()
    image, labels, values = ct_phantom(scale.size_xyz, scale.spacing_xyz, max_voxels=scale.phantom_voxels)
    sitk.WriteImage(image, str(work / "ct_a.nrrd"))
    shutil.copyfile(work / "ct_a.nrrd", work / "ct_b.nrrd")
    phantom_s = time.perf_counter() - started

    manifest = hermes_r_manifest(checkpoint_sha256="0" * 64, weights="random initialisation (benchmark)")
    manifest.update(name="hermes-r-random", title=f"{scale.name}, random weights (GPU benchmark only)",
                    architecture=scale.architecture.to_manifest())
    manifest["input"] = {**manifest["input"], "window_size_zyx": [scale.window] * 3,
                         "spacing_zyx_mm": [scale.model_spacing_mm] * 3}
    manifest["provenance"] = {"source": "random initialisation (torch.manual_seed(0)) in benchmarks/bench_gpu.py"}
    torch.manual_seed(0)
    package = save(work / "hermes-r-random.safetensors", HermesNetwork(scale.architecture).state_dict(), manifest)

    window = [scale.window] * 3
    model_space = to_model_space(image, spacing_zyx=[scale.model_spacing_mm] * 3,
                                  normalization=CT_NORMALIZATION, crop_to_body=True, modality="CT",
                                  window_lattice=(window, OVERLAP))
    # The oracle's probabilities: each target's true indicator resampled linearly onto the model
    # crop that segment_image will make (same call, same arguments), uint8 as the engine returns.
    crop_grid = model_space.crop_image(np.zeros(model_space.array.shape, dtype=np.uint8))
    oracle = np.lib.format.open_memmap(work / "oracle.npy", mode="w+", dtype=np.uint8,
                                       shape=(len(TARGETS), *model_space.array.shape))
    for number, target in enumerate(TARGETS):
        indicator = sitk.Cast(labels == values[target], sitk.sitkUInt8) * 255
        oracle[number] = sitk.GetArrayFromImage(sitk.Resample(indicator, crop_grid, sitk.Transform(), sitk.sitkLinear,
                                                              0, sitk.sitkUInt8))
    oracle.flush()
    padded = [max(n, w) for n, w in zip(model_space.array.shape, window)]
    info = {"seconds": round(time.perf_counter() - started, 1), "phantom_seconds": round(phantom_s, 1),
            "size_xyz": list(scale.size_xyz), "spacing_xyz": list(scale.spacing_xyz),
            "model_space_zyx": list(model_space.array.shape), "windows": len(window_starts(padded, window, OVERLAP)),
            "package_mb": round(package.stat().st_size / 2**20, 1)}
    (work / "prepared.json").write_text(json.dumps(info), encoding="utf-8")


def start_prepare(work: Path, smoke: bool) -> subprocess.Popen:
    command = [sys.executable, str(Path(__file__).resolve()), "--prepare", str(work)] + (["--smoke"] if smoke else [])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4")}
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=open(work / "prepare.log", "w"), env=env)


def wait_prepared(child: subprocess.Popen, work: Path, budget: Budget) -> dict[str, Any] | None:
    try:
        child.wait(timeout=max(budget.left() - 60, 1))
    except subprocess.TimeoutExpired:
        child.kill()
        raise RuntimeError("making the CT and the package did not finish in time") from None
    if child.returncode:
        tail = (work / "prepare.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        raise RuntimeError(f"making the CT and the package failed: {' | '.join(tail)}")
    return json.loads((work / "prepared.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------
# Part 2: end to end through the CLI


# The CLI's progress marks of one case, in order, and the stage each one ends.
STAGE_ENDED_BY = {"preprocess": "read", "inference": "to_model_space", "postprocess": "inference",
                  "write": "back_to_grid", "end": "write"}


def case_marks(events: list[tuple[float, dict[str, Any]]], case: str) -> tuple[dict[str, float], dict[str, Any]]:
    """When each progress mark of ``case`` first arrived, and what its lines say (``windows``,
    ``cli_reported_s``)."""
    marks: dict[str, float] = {}
    stages: dict[str, Any] = {}
    for t, event in events:
        if event.get("case") == case:
            key = (event.get("stage"), event.get("fraction"))
            if key == ("preprocess", 0.0):
                marks.setdefault("preprocess", t)
            elif key == ("preprocess", 1.0):
                marks.setdefault("inference", t)
            elif event.get("stage") == "inference" and str(event.get("message", "")).endswith(" windows"):
                stages["windows"] = int(str(event["message"]).split()[0])
            elif event.get("stage") == "postprocess":
                marks.setdefault("postprocess", t)
                if event.get("fraction") == 1.0:
                    marks.setdefault("write", t)
        elif str(event.get("message", "")).startswith(f"{case}: ") and " targets in " in event["message"]:
            marks.setdefault("end", t)
            stages["cli_reported_s"] = float(event["message"].split(" targets in ")[1].split(" s")[0])
    return marks, stages


def cli_stages(events: list[tuple[float, dict[str, Any]]], cases: list[str]) -> dict[str, Any]:
    """Stage times from the CLI's --progress-json lines, each stamped with its arrival (s since launch).

    Per case: ``read`` (from the previous case's end, or the CLI's first line, to its first
    preprocess line), ``to_model_space``, ``inference`` (to the first postprocess line),
    ``back_to_grid`` (mapping back and clean-up), ``write``, ``total``; ``windows``; stages a run
    cut short never reached are absent. ``startup``: launch to the first line (imports, model load).
    """
    out: dict[str, Any] = {"cases": {}}
    starts = [t for t, e in events if "message" in e and "case" not in e]
    if not starts:
        return out
    out["startup"] = starts[0]
    previous_end = starts[0]
    for case in cases:
        marks, stages = case_marks(events, case)
        last = previous_end
        for mark, stage in STAGE_ENDED_BY.items():
            if mark not in marks:
                break
            stages[stage] = marks[mark] - last
            last = marks[mark]
        if "end" in marks:
            stages["total"] = marks["end"] - previous_end
            previous_end = marks["end"]
        out["cases"][case] = stages
        if "end" not in marks:
            break
    return out


def run_cli(results: Results, budget: Budget, work: Path, device: torch.device, keep_s: float) -> None:
    """Run the CLI on two copies of the CT; stop it when only ``keep_s`` of the budget is left."""
    command = [sys.executable, "-m", "HermesSegmentLib.cli", "segment",
               str(work / "ct_a.nrrd"), str(work / "ct_b.nrrd"), "--modality", "CT", "--targets", ",".join(TARGETS),
               "--model", str(work / "hermes-r-random.safetensors"),
               "--out", str(work / "cli-out"), "--device", device.type, "--progress-json"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(LIB), os.environ.get("PYTHONPATH")])),
           "HERMES_SEGMENT_HOME": str(work / "home")}
    record = results.data["cli"]
    record["command"] = "hermes-segment segment ct_a.nrrd ct_b.nrrd --modality CT --targets " + ",".join(TARGETS) + \
                        f" --model hermes-r-random.safetensors --device {device.type} --progress-json"
    events: list[tuple[float, dict[str, Any]]] = []
    with open(work / "cli.log", "w") as stderr:
        launched = time.perf_counter()
        child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
                                 start_new_session=True)

    def read_lines() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append((time.perf_counter() - launched, event))

    reader = threading.Thread(target=read_lines, daemon=True)
    reader.start()
    timeout = max(budget.left() - RESERVE_S - keep_s, 5.0)
    try:
        child.wait(timeout=timeout)
        record["returncode"] = child.returncode
    except (subprocess.TimeoutExpired, OutOfTime) as stop:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        record["stopped"] = f"stopped after {time.perf_counter() - launched:.0f} s to stay within the time budget"
        budget.skipped.append("the CLI run was cut short: " + record["stopped"])
        if isinstance(stop, OutOfTime):
            raise
    finally:
        reader.join(timeout=5)
        record["wall_s"] = time.perf_counter() - launched
        record.update(cli_stages(list(events), ["ct_a", "ct_b"]))
        results.save()
    if record.get("returncode"):
        tail = (work / "cli.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-3:]
        record["stderr_tail"] = tail
    summary = work / "cli-out" / "summary.csv"
    if summary.is_file():
        with open(summary, newline="", encoding="utf-8") as stream:
            record["mask_voxels"] = {row["target"]: int(row["voxels"]) for row in csv.DictReader(stream)
                                     if row["case"] == "ct_a"}
    results.save()


# --------------------------------------------------------------------------------------------
# Part 3: the stages outside the network with anatomical masks


def run_oracle(results: Results, work: Path, device: torch.device) -> None:
    """segment_image with the CLI's defaults, the network replaced by the phantom's truth
    (oracle.npy, made by :func:`prepare` on the same model crop)."""
    import numpy as np

    from HermesSegmentLib import writers
    from HermesSegmentLib.models import load
    from HermesSegmentLib.pipeline import segment as pipeline
    from HermesSegmentLib.read import read_image

    model = load(work / "hermes-r-random.safetensors")
    truth = np.load(work / "oracle.npy", mmap_mode="r")
    row = {model.task_index(key, "CT"): number for number, key in enumerate(TARGETS)}

    def oracle(predictor, volume, **kwargs) -> np.ndarray:
        if truth.shape[1:] != volume.shape:
            raise RuntimeError(f"the oracle's crop {truth.shape[1:]} is not segment_image's {volume.shape}")
        return np.stack([truth[row[predictor.task_indices[output]]] for output in predictor.outputs])

    record = results.data["oracle"]
    started = time.perf_counter()
    image = read_image(work / "ct_a.nrrd")
    record["read"] = time.perf_counter() - started
    predict_volume, pipeline.predict_volume = pipeline.predict_volume, oracle
    try:
        result = pipeline.segment_image(image, modality="CT", targets=list(TARGETS), model=model, device=str(device))
    finally:
        pipeline.predict_volume = predict_volume
    record["to_model_space"] = result.seconds["preprocess"]
    record["back_to_grid"] = result.seconds["postprocess"]
    started = time.perf_counter()
    writers.write_seg_nrrd(work / "oracle.seg.nrrd", result.masks, result.reference)
    record["write"] = time.perf_counter() - started
    record["mask_voxels"] = {m.key: int(m.voxels) for m in result.masks}
    results.save()


# --------------------------------------------------------------------------------------------
# Tables


def per_ct_seconds(row: dict[str, Any], windows: int | None) -> float | None:
    """Network seconds for a CT: its windows in batches of ``row['batch']`` at the median batch time."""
    if not windows or "ms_per_window_median" not in row:
        return None
    return math.ceil(windows / row["batch"]) * row["batch"] * row["ms_per_window_median"] / 1000


def render(data: dict[str, Any], command: str) -> str:
    env, volume = data["environment"], data["volume"]
    windows = volume.get("windows")
    rows = data["network"]
    default = next((r for r in rows if r.get("variant") == "default"
                    and r.get("precision") == data.get("default_precision")
                    and r.get("batch") == data.get("default_batch") and "ms_per_window_median" in r), None)
    where = (f"{env.get('gpu')} ({env.get('gpu_memory_gb')} GiB, compute capability {env.get('capability')}), "
             f"CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}" if env.get("gpu") else f"CPU ({env.get('cpu')})")
    lines = [
        f"### GPU benchmark: {data.get('scale')} — {env.get('date', '')[:10]}",
        "",
        (f"Machine: {where}; {env.get('cpu_cores')} CPU cores; Python {env.get('python')}, torch {env.get('torch')}, "
         f"SimpleITK {env.get('SimpleITK')}. Command: `{command}` ({data['budget'].get('used_s', 0):.0f} s of a "
         f"{data['budget'].get('limit_s', 0):.0f} s budget)."),
        (f"Network: {data.get('reference', {}).get('parameters', 0) / 1e6:.1f} M parameters "
         f"(matches the released state dict: {data.get('reference', {}).get('matches_reference')}; the benchmark's "
         f"own network: {data.get('network_parameters', 0) / 1e6:.2f} M), random weights, "
         f"{next((r['tasks'] for r in rows if 'tasks' in r), '?')} CT tasks per window."),
    ]
    if volume:
        lines.append(f"Volume: {'x'.join(map(str, volume.get('size_xyz', [])))} at "
                     f"{'x'.join(f'{s:g}' for s in volume.get('spacing_xyz', []))} mm (phantom CT) -> model space "
                     f"{'x'.join(map(str, volume.get('model_space_zyx', [])))} (z, y, x) after the body crop: "
                     f"{windows} windows at overlap {OVERLAP}.")
    lines += ["", ("| precision | batch | variant | ms per window (min / median) | time vs default | network s per CT "
                   "| peak GPU memory, GB | note |"), "|---|---:|---|---:|---:|---:|---:|---|"]
    for row in rows:
        if "ms_per_window_median" not in row:
            lines.append(f"| {row['precision']} | {row['batch']} | {row['variant']} | | | | "
                         f"| {row.get('skipped', '')} |")
            continue
        ratio = f"{row['ms_per_window_median'] / default['ms_per_window_median']:.2f}" if default else ""
        per_ct = per_ct_seconds(row, windows)
        peak = f"{row['peak_gb']:.2f}" if "peak_gb" in row else ""
        note = "" if row.get("finite", True) else "non-finite logits"
        lines.append(f"| {row['precision']} | {row['batch']} | {row['variant']} | {row['ms_per_window_min']:.1f} / "
                     f"{row['ms_per_window_median']:.1f} | {ratio} | {'' if per_ct is None else f'{per_ct:.2f}'} "
                     f"| {peak} | {note} |")
    lines += end_to_end(data, default)
    if data["budget"].get("skipped"):
        lines += ["", "Not measured (time budget): " + "; ".join(data["budget"]["skipped"]) + "."]
    if data["errors"]:
        lines += ["", "Errors: " + "; ".join(e["error"] for e in data["errors"]) + "."]
    return "\n".join(lines) + "\n"


STAGES = [("startup", "start-up: imports, model load (once per command)"), ("read", "read the CT"),
          ("to_model_space", "to model space: resample, normalise, body crop"),
          ("inference", "inference: network + host<->device transfers + blending"),
          ("back_to_grid", "back to the input grid + clean-up"), ("write", "write .seg.nrrd")]


def end_to_end(data: dict[str, Any], default: dict[str, Any] | None) -> list[str]:
    cli, oracle = data["cli"], data["oracle"]
    if not cli.get("cases") and not oracle:
        return []
    cases = cli.get("cases", {})
    first, second = cases.get("ct_a", {}), cases.get("ct_b", {})
    lines = ["", (f"End to end: `{cli.get('command', 'hermes-segment segment')}` (defaults otherwise: "
                  f"{data.get('default_precision')}, batch {data.get('default_batch')}, overlap {OVERLAP}), "
                  "and the same stages with anatomical masks (the network replaced by the phantom's truth)."), "",
             "| stage | case 1, s | case 2, s | anatomical masks, s |", "|---|---:|---:|---:|"]

    def cell(record: dict[str, Any], key: str) -> str:
        return f"{record[key]:.2f}" if isinstance(record.get(key), (int, float)) else ""

    for key, label in STAGES:
        if key == "startup":
            lines.append(f"| {label} | {cell(cli, 'startup')} | | |")
        else:
            lines.append(f"| {label} | {cell(first, key)} | {cell(second, key)} | {cell(oracle, key)} |")
    lines.append(f"| case total (read to written) | {cell(first, 'total')} | {cell(second, 'total')} | |")
    case = second if "total" in second else first
    windows = case.get("windows") or data["volume"].get("windows")
    network_s = per_ct_seconds(default, windows) if default else None
    if "total" in case and network_s is not None:
        outside = case["total"] - network_s
        lines += ["", (f"Case {'2' if case is second else '1'}: {case['total']:.1f} s end to end, of which the "
                       f"network ~{network_s:.1f} s ({windows} windows at the default configuration above) and "
                       f"{outside:.1f} s ({100 * outside / case['total']:.0f}%) outside it.")]
        case_stages, oracle_stages = ("read", "to_model_space", "inference"), ("back_to_grid", "write")
        if all(k in oracle for k in oracle_stages) and all(k in case for k in case_stages):
            anatomical = (case["read"] + case["to_model_space"] + case["inference"]
                          + oracle["back_to_grid"] + oracle["write"])
            lines.append(f"With anatomical masks instead of random-weight noise: ~{anatomical:.1f} s "
                         f"({100 * (anatomical - network_s) / anatomical:.0f}% outside the network)."
                         + (f" Goal, <= 10 s per CT: {'met' if anatomical <= 10 else 'not met'}."
                            if data.get("scale") == FULL.name else ""))
    if cli.get("mask_voxels"):
        lines.append("Mask voxels, random weights (case 1): "
                     + ", ".join(f"{k} {v}" for k, v in cli["mask_voxels"].items())
                     + "; anatomical: " + ", ".join(f"{k} {v}" for k, v in oracle.get("mask_voxels", {}).items()) + ".")
    if cli.get("stopped") or cli.get("returncode"):
        lines.append(f"CLI: {cli.get('stopped') or 'exit status ' + str(cli.get('returncode'))} "
                     f"{' | '.join(cli.get('stderr_tail', []))}")
    return lines


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=False, help="folder for bench_gpu.json and bench_gpu.md")
    parser.add_argument("--append", type=Path, help="also add the tables to this Markdown file, newest first")
    parser.add_argument("--device", default="auto", help="auto (a GPU when there is one), cuda or cpu")
    parser.add_argument("--budget", type=float, help="seconds (default 210; 150 with --smoke)")
    parser.add_argument("--smoke", action="store_true", help="tiny network and a small CT: checks the script itself")
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)  # the child process that makes the inputs
    args = parser.parse_args(argv)
    scale = SMOKE if args.smoke else FULL
    if args.prepare:
        prepare(args.prepare, scale)
        return 0
    if args.out is None:
        parser.error("--out is required")
    args.out.mkdir(parents=True, exist_ok=True)
    command = ("python benchmarks/bench_gpu.py" + (" --smoke" if args.smoke else "")
               + (f" --budget {args.budget:g}" if args.budget else "")
               + (f" --device {args.device}" if args.device != "auto" else ""))
    budget = Budget(args.budget or scale.budget_s)
    results = Results(args.out)
    work = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    child = None
    try:
        child = start_prepare(work, args.smoke)
        run_all(results, budget, work, child, select_device(args.device), scale)
    except OutOfTime:
        budget.skipped.append("stopped at the hard time limit")
    except Exception as error:  # keep and report what was measured before it
        results.error("benchmark", error)
    finally:
        budget.close()
        if child is not None and child.poll() is None:
            child.kill()
        shutil.rmtree(work, ignore_errors=True)
    results.data["budget"] = {"limit_s": budget.limit, "used_s": round(budget.used(), 1), "skipped": budget.skipped}
    results.save()
    text = render(results.data, command)
    print(text)
    (args.out / "bench_gpu.md").write_text(text, encoding="utf-8")
    if args.append:
        add_newest_first(args.append, text)
    return 0


def run_end_to_end(results: Results, budget: Budget, work: Path, device: torch.device, end_to_end_s: float) -> None:
    """Parts 2 and 3, each as far as the budget allows: the CLI, then the stages with anatomical masks."""
    if budget.allows(0.3 * end_to_end_s, "the CLI run"):
        print("end to end through the CLI ...", file=sys.stderr, flush=True)
        try:
            run_cli(results, budget, work, device, keep_s=0.25 * end_to_end_s)
        except OutOfTime:
            raise
        except Exception as error:  # report it, go on with the other parts
            results.error("CLI run", error)
    if budget.allows(0.2 * end_to_end_s, "the stages with anatomical masks"):
        print("stages with anatomical masks ...", file=sys.stderr, flush=True)
        try:
            run_oracle(results, work, device)
        except OutOfTime:
            raise
        except Exception as error:  # report it, go on with the rest of the grid
            results.error("anatomical masks", error)


def run_all(results: Results, budget: Budget, work: Path, child: subprocess.Popen, device: torch.device,
            scale: Scale) -> None:
    """The network grid first (the GPU works while the child process makes the CT on the CPU), but
    leaving time for the end-to-end runs; then the CLI, the anatomical masks, and what is left of
    the grid."""
    data = results.data
    data["scale"] = scale.name
    data["environment"] = environment(device)
    data["reference"] = check_reference()
    default_precision = precision_name(compute_dtype(device, "auto"))
    data["default_precision"] = default_precision
    # The batch size the CLI chooses here (--batch-size left out): from memory per window and free memory.
    dtype = compute_dtype(device, "auto")
    per_window_gb = window_memory_gb((scale.window,) * 3, scale.architecture.base_channels, dtype)
    data["default_batch"] = choose_batch_size(device, per_window_gb, available_memory_gb(device))
    results.save()

    torch.manual_seed(0)
    network = HermesNetwork(scale.architecture).eval().to(device)
    data["network_parameters"] = sum(p.numel() for p in network.parameters())
    weights_gb = sum(p.numel() * p.element_size() for p in network.parameters()) / 2**30
    tasks = ct_task_indices()
    configs = grid(scale, device, default_precision, data["default_batch"])
    end_to_end_s = scale.end_to_end_s
    for config in configs:
        run_network_config(results, budget, network, device, config, tasks, scale, weights_gb, keep_s=end_to_end_s)

    try:
        prepared = wait_prepared(child, work, budget)
    except RuntimeError as error:
        results.error("inputs", error)
        prepared = None
    if prepared is not None:
        data["volume"] = prepared
        results.save()
        if device.type == "cuda":
            torch.cuda.empty_cache()  # leave the GPU's memory to the CLI's process
        run_end_to_end(results, budget, work, device, end_to_end_s)
    measured = {(r["precision"], r["batch"], r["variant"]) for r in data["network"]}
    for config in configs:
        if config not in measured:
            run_network_config(results, budget, network, device, config, tasks, scale, weights_gb, keep_s=0.0)


if __name__ == "__main__":
    sys.exit(main())
