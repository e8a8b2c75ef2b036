"""Load test of `hermes-segment serve`: many jobs from several clients, against a local run in the same run.

Usage: python benchmarks/bench_server.py [--jobs 50] [--clients 4] [--device cpu] [--size crop|ct]
                                         [--write docs/benchmarks.md]

Cases: phantom CTs (``crop``: 150 mm crops around organs, one model window each, what two shared
CPU cores can push 50 of; ``ct``: whole torso phantoms at 512 x 512 in-plane, for a GPU server).
  (a) baseline: the same cases segmented one after another in this process (``segment_image`` +
      the .seg.nrrd written), the way `hermes-segment segment` runs them, after one warm-up case;
  (b) the server, started as `hermes-segment serve` on the same device, loaded by ``--clients``
      threads that each submit, wait for and download their share of ``--jobs`` jobs through
      ``ServerClient.segment`` (upload, queue, run, download, delete).
It prints throughput (jobs per minute), latency per job as a client sees it (submit to file on
disk: p50, p95, max), the server's own run time per job, and ratios against (a).
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TypedDict

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "HermesSegment"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "Testing"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from HermesSegmentLib.models import load
from HermesSegmentLib.pipeline import segment_image
from HermesSegmentLib.writers import write_seg_nrrd
from results_file import add_newest_first
from serving import phantom_crops, running_server

ROOT = Path(__file__).resolve().parents[1]


class Request(TypedDict):
    """What both ways are asked: ``segment_image``'s keywords and the server request's fields."""

    modality: str
    targets: str


OPTIONS: Request = {"modality": "CT", "targets": "all"}


def whole_phantoms(folder: Path, count: int) -> list[Path]:
    """``count`` whole torso phantom CTs resampled to 512 x 512 in-plane (about a clinical CT's size)."""
    from HermesSegmentLib.cli import main

    paths = []
    for seed in range(count):
        assert main(["phantoms", "--out", str(folder), "--single", "CT", "--name", f"torso{seed}",
                     "--seed", str(seed)]) == 0
        image = sitk.ReadImage(str(folder / f"torso{seed}.nii.gz"))
        size = np.array(image.GetSize())
        spacing = np.array(image.GetSpacing()) * size / [512, 512, size[2]]
        resampled = sitk.Resample(image, [512, 512, int(size[2])], sitk.Transform(), sitk.sitkLinear,
                                  image.GetOrigin(), spacing.tolist(), image.GetDirection(), -1000, sitk.sitkInt16)
        path = folder / f"ct{seed}.nii.gz"
        sitk.WriteImage(resampled, str(path), True)
        paths.append(path)
    return paths


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def local_run(cases: list[Path], device: str, scratch: Path) -> float:
    """Seconds per case, segmenting and writing one case after another in this process."""
    model = load("hermes-demo", device=device)

    def run(path: Path) -> None:
        result = segment_image(sitk.ReadImage(str(path)), model=model, device=device, **OPTIONS)
        write_seg_nrrd(scratch / f"{path.name}.seg.nrrd", result.masks, result.reference)

    run(cases[0])  # warm-up
    started = time.perf_counter()
    for path in cases:
        run(path)
    return (time.perf_counter() - started) / len(cases)


def load_test(server, cases: list[Path], jobs: int, clients: int, scratch: Path) -> dict:
    """``jobs`` jobs over ``clients`` threads; latency per job and the server's own run time."""
    work = list(range(jobs))
    lock = threading.Lock()
    latencies: list[float] = []
    run_times: list[float] = []
    failures: list[str] = []

    def client_thread(number: int) -> None:
        client = server.client()
        while True:
            with lock:
                if not work:
                    return
                job = work.pop(0)
            started = time.perf_counter()
            try:
                status, _ = client.segment(cases[job % len(cases)], {**OPTIONS, "name": f"job{job}"},
                                           scratch / f"client{number}")
            except Exception as error:  # counted and printed
                failures.append(f"job {job}: {error}")
                continue
            with lock:
                latencies.append(time.perf_counter() - started)
                run_times.append(status["finished"] - status["started"])

    server.client().segment(cases[0], OPTIONS, scratch / "warm-up")
    started = time.perf_counter()
    threads = [threading.Thread(target=client_thread, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"wall": time.perf_counter() - started, "latencies": latencies, "run_times": run_times,
            "failures": failures}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=("crop", "ct"), default="crop")
    parser.add_argument("--jobs-per-device", type=int, default=1, help="the server's --jobs-per-device")
    parser.add_argument("--write", type=Path, help="add the table to this Markdown file, newest first")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-server-") as folder:
        scratch = Path(folder)
        cases = phantom_crops(scratch / "cases", 4) if args.size == "crop" else whole_phantoms(scratch / "cases", 2)
        per_case = local_run(cases, args.device, scratch)
        with running_server(scratch / "server", "--device", args.device, "--jobs-per-device", str(args.jobs_per_device),
                            "--max-jobs-per-client", str(args.jobs)) as server:
            measured = load_test(server, cases, args.jobs, args.clients, scratch)
            if measured["failures"]:
                print("server log:\n" + server.log(), flush=True)
        sizes = sorted({sitk.ReadImage(str(p)).GetSize() for p in cases})
    for failure in measured["failures"][:5]:
        print("failed:", failure, flush=True)
    done = len(measured["latencies"])
    if not done:
        raise SystemExit("no job succeeded")
    throughput = 60 * done / measured["wall"]
    latencies, run_times = measured["latencies"], measured["run_times"]
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"{platform.machine()} CPU"
    lines = [
        f"### Server load test — {datetime.date.today().isoformat()} ({args.jobs} jobs, {args.clients} clients, "
        f"{args.size} cases)",
        "",
        f"Machine: {device}, torch {torch.__version__}, server and clients on the same machine (127.0.0.1). "
        f"Command: `python benchmarks/bench_server.py --jobs {args.jobs} --clients {args.clients} "
        f"--device {args.device} --size {args.size} --jobs-per-device {args.jobs_per_device}`.",
        f"Cases: {len(cases)} phantom CTs ({', '.join('x'.join(map(str, s)) for s in sizes)} voxels), demo model, "
        "all CT targets, default options; each job uploads the NIfTI file, waits, downloads the .seg.nrrd and "
        f"deletes the job. The server runs {args.jobs_per_device} job(s) at a time. Failed jobs: "
        f"{len(measured['failures'])}.",
        "",
        "| what | value | ratio vs (a) |",
        "|---|---:|---:|",
        f"| (a) local run, seconds per case (one after another, in process) | {per_case:.2f} | 1.00 |",
        f"| (a) local throughput, cases per minute | {60 / per_case:.1f} | 1.00 |",
        f"| (b) server throughput, jobs per minute | {throughput:.1f} | {throughput * per_case / 60:.2f} |",
        f"| (b) server run time per job, median s (read, segment, write) | {statistics.median(run_times):.2f} | "
        f"{statistics.median(run_times) / per_case:.2f} |",
        f"| (b) latency per job as a client sees it, p50 s | {percentile(latencies, 50):.2f} | "
        f"{percentile(latencies, 50) / per_case:.2f} |",
        f"| (b) latency p95 s | {percentile(latencies, 95):.2f} | {percentile(latencies, 95) / per_case:.2f} |",
        f"| (b) latency max s | {max(latencies):.2f} | {max(latencies) / per_case:.2f} |",
        "",
    ]
    print("\n".join(lines))
    if args.write:
        add_newest_first(args.write, "\n".join(lines))


if __name__ == "__main__":
    main()
