"""How much memory segmenting a 512 x 512 x 300 CT with 15 targets needs with Hermes-R.

    python benchmarks/memory_hermes_r.py [--write docs/benchmarks.md]

Two measurements, each the peak RSS of its own child process (so they do not mix):
  1. the whole `hermes-segment segment` command on the benchmark CT with a package that has
     Hermes-R's input geometry (128^3 windows at 1.5 mm, 15 CT targets) but base 8 channels, so
     that what is measured is the engine (volumes, slab accumulators, results) and not the network;
  2. one forward pass of the real Hermes-R network (random weights, 60.9 M parameters) on a batch
     of two 128^3 windows with 15 tasks, as the engine runs it on the CPU (inference_mode,
     channels-last), in float32 and, where the CPU multiplies bf16 natively, in bf16 autocast
     (what --precision auto picks there): the network's own share.
The sum is what a CPU run needs; the engine's share does not depend on the network's width.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HermesSegment"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from phantom_ct import ct_phantom  # the CPU benchmark's CT
from results_file import add_newest_first

REPO = Path(__file__).resolve().parents[1]

FORWARD = """
import sys, torch
sys.path.insert(0, {lib!r})
from HermesSegmentLib.inference import autocast, compute_dtype
from HermesSegmentLib.network import HermesNetwork

def high_water_kb():  # this process's own peak (VmHWM), not what it shared with its parent before exec
    with open("/proc/self/status") as stream:
        return int(next(l for l in stream if l.startswith("VmHWM:")).split()[1])

cpu = torch.device("cpu")
network = HermesNetwork().eval().to(memory_format=torch.channels_last_3d)
images = torch.randn(2, 1, 128, 128, 128).contiguous(memory_format=torch.channels_last_3d)
before = high_water_kb()
with torch.inference_mode(), autocast(cpu, compute_dtype(cpu, {precision!r})):
    network(images, torch.arange(15)[None].expand(2, -1), torch.zeros(2, 1, dtype=torch.long))
print(before, high_water_kb())
"""


def forward_gb(precision: str) -> float:
    """Peak RSS of one Hermes-R forward pass above the loaded model, in a child process."""
    code = FORWARD.format(lib=str(REPO / "HermesSegment"), precision=precision)
    child = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    before, after = child.stdout.split()
    return (int(after) - int(before)) / 2**20

def peak_rss_of_command(command: list[str]) -> float:
    """Peak RSS in GB of a child process, from its own VmHWM read while it runs.

    getrusage(RUSAGE_CHILDREN) would also count the parent's pages that the child shares between
    fork and exec. Raises ``CalledProcessError`` when the command fails.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO / "HermesSegment")}
    child = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    peak_kb = 0
    while child.poll() is None:
        try:
            with open(f"/proc/{child.pid}/status") as stream:
                line = next(entry for entry in stream if entry.startswith("VmHWM:"))
            peak_kb = max(peak_kb, int(line.split()[1]))
        except (OSError, StopIteration):
            pass
        time.sleep(0.05)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, command)
    return peak_kb / 2**20


def geometry_package(path: Path) -> list[str]:
    import torch

    from HermesSegmentLib import vocabulary
    from HermesSegmentLib.models import save
    from HermesSegmentLib.models.manifest import HERMES_R_INPUT, modality_entries, task_entry
    from HermesSegmentLib.network import HermesConfig, HermesNetwork

    ct = vocabulary.hermes_r_defaults()["CT"]
    keys = sorted(ct, key=ct.__getitem__)[:15]
    config = HermesConfig(base_channels=8, head_dim=16, num_task_priors=15)
    manifest = {
        "format": "hermes-segment-model", "format_version": 1, "name": "hermes-r-geometry",
        "title": "Hermes-R input geometry, tiny channels (memory benchmark)", "version": "0", "license": "n/a",
        "intended_use": "benchmark only", "architecture": config.to_manifest(), "input": dict(HERMES_R_INPUT),
        "modalities": modality_entries(["CT"]),
        "tasks": [task_entry(i, k, "bench", ["CT"]) for i, k in enumerate(keys)],
        "defaults": {"CT": {k: i for i, k in enumerate(keys)}}, "provenance": {"source": "random weights"},
    }
    torch.manual_seed(0)
    save(path, HermesNetwork(config).state_dict(), manifest)
    return keys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", type=Path)
    args = parser.parse_args()
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory() as scratch:
        tmp = Path(scratch)
        keys = geometry_package(tmp / "geometry.safetensors")
        sitk.WriteImage(ct_phantom()[0], str(tmp / "ct.nrrd"))
        engine_gb = peak_rss_of_command([sys.executable, "-m", "HermesSegmentLib.cli", "segment",
                                            str(tmp / "ct.nrrd"), "--modality", "CT",
                                            "--model", str(tmp / "geometry.safetensors"),
                                            "--out", str(tmp / "out"), "--device", "cpu"])
    from HermesSegmentLib.inference.device import cpu_has_native_bf16

    network_gb = forward_gb("float32")
    mixed_gb = forward_gb("bfloat16") if cpu_has_native_bf16() else None
    text = (
        f"### Memory for a 512x512x300 CT with 15 targets and Hermes-R — {datetime.date.today().isoformat()}\n\n"
        f"Command: `python benchmarks/memory_hermes_r.py`. Targets: {', '.join(keys)}.\n\n"
        "| what | peak RSS, GB |\n|---|---:|\n"
        "| whole `segment` command, Hermes-R geometry (128³ at 1.5 mm), 15 targets, base-8 network, batch 2 "
        f"| {engine_gb:.2f} |\n"
        "| one Hermes-R forward pass (2 x 128³ windows, 15 tasks, CPU, float32), above the loaded model "
        f"| {network_gb:.2f} |\n"
        f"| estimate for the real Hermes-R run in float32 (sum) | {engine_gb + network_gb:.2f} |\n"
    )
    if mixed_gb is not None:
        text += (f"| the same forward pass in bf16 autocast (`--precision auto` on this CPU) | {mixed_gb:.2f} |\n"
                 f"| estimate for the real Hermes-R run in bf16 (sum) | {engine_gb + mixed_gb:.2f} |\n")
    else:
        text += "\nThis CPU has no native bf16: the bf16 forward pass was not measured.\n"
    print(text)
    if args.write:
        add_newest_first(args.write, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
