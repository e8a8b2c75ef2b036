"""A real `hermes-segment serve` process on 127.0.0.1 for the tests (server, CLI --server, console API)."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import requests
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STARTUP_SECONDS = 120


@dataclass
class RunningServer:
    url: str
    work_dir: Path
    process: subprocess.Popen
    output: list[str] = field(default_factory=list)

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(f"{self.url}{path}", headers=kwargs.pop("headers", AUTH), timeout=60, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(f"{self.url}{path}", headers=kwargs.pop("headers", AUTH), timeout=60, **kwargs)

    def client(self, **kwargs):
        from HermesSegmentLib.server.client import ServerClient

        return ServerClient(self.url, TOKEN, poll_interval=0.1, **kwargs)

    def job_folders(self) -> list[Path]:
        jobs = self.work_dir / "jobs"
        return sorted(jobs.iterdir()) if jobs.is_dir() else []

    def log(self) -> str:
        return "\n".join(self.output[-40:])


@contextlib.contextmanager
def running_server(work_dir: Path, *options: str) -> Iterator[RunningServer]:
    """Start ``hermes-segment serve --port 0 --device cpu`` with the test token; stop it (SIGTERM) after."""
    env = dict(os.environ, HERMES_SEGMENT_TOKEN=TOKEN,
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO / "HermesSegment"), os.environ.get("PYTHONPATH")) if p))
    process = subprocess.Popen(
        [sys.executable, "-m", "HermesSegmentLib.cli", "serve", "--port", "0", "--device", "cpu",
         "--work-dir", str(work_dir), *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env)
    output: list[str] = []
    announced = threading.Event()

    def drain() -> None:  # reads everything, so that the server never blocks on a full pipe
        assert process.stdout is not None
        for line in process.stdout:
            output.append(line.rstrip())
            if "server on http" in line:
                announced.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not announced.wait(0.2):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server did not start:\n" + "\n".join(output))
        url_match = re.search(r"server on (http://\S+)", next(line for line in output if "server on http" in line))
        assert url_match, "the server announced no URL"
        url = url_match.group(1)
        server = RunningServer(url, work_dir, process, output)
        while True:  # the port is bound before the app accepts requests
            with contextlib.suppress(requests.ConnectionError):
                if server.get("/v1/info").ok:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not answer:\n" + server.log())
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def small_ct(shape_xyz=(40, 40, 30), spacing=(3.5, 3.5, 4.0), seed=0) -> sitk.Image:
    """An ellipse of soft tissue in air with a brighter blob, int16 HU (one model window)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: shape_xyz[2], : shape_xyz[1], : shape_xyz[0]]
    body = ((x - shape_xyz[0] / 2) / (shape_xyz[0] / 2.5)) ** 2 + ((y - shape_xyz[1] / 2) / (shape_xyz[1] / 3)) ** 2 < 1
    array = np.where(body, 40, -1000) + rng.normal(0, 10, body.shape)
    array[(x - shape_xyz[0] // 2) ** 2 + (y - shape_xyz[1] // 2) ** 2 + (z - shape_xyz[2] // 2) ** 2 < 30] = 200
    image = sitk.GetImageFromArray(array.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin((-60.0, 20.0, 100.0))
    return image


def long_job_ct(shape_xyz=(72, 72, 40)) -> sitk.Image:
    """A CT whose job (all targets, overlap 0.9, no body crop) runs minutes of windows on any machine
    yet stays under the test server's voxel limit: coarse 6 x 6 x 8 mm voxels, which the 4 mm model
    resamples to many more. A job of seconds once finished on a fast CI machine before the test could
    cancel it."""
    return small_ct(shape_xyz=shape_xyz, spacing=(6.0, 6.0, 8.0))


def phantom_crops(folder: Path, count: int) -> list[Path]:
    """``count`` small CT crops (about 150 mm, one model window each) of a synthetic torso phantom,
    centred on different organs, so that the demo model finds several targets in each."""
    from HermesSegmentLib.cli import main

    assert main(["phantoms", "--out", str(folder), "--single", "CT", "--name", "torso", "--seed", "3",
                 "--max-voxels", "250000"]) == 0
    image = sitk.ReadImage(str(folder / "torso.nii.gz"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "torso_truth.nii.gz")))
    spacing = np.array(image.GetSpacing())
    half = np.round(75.0 / spacing).astype(int)
    size = np.array(image.GetSize())
    paths = []
    for number, label in enumerate(sorted(v for v in np.unique(labels) if v)[:count]):
        z, y, x = (int(np.mean(axis)) for axis in np.nonzero(labels == label))
        low = np.clip(np.array([x, y, z]) - half, 0, None)
        extent = np.minimum(2 * half, size - low)
        path = folder / f"crop{number}.nii.gz"
        sitk.WriteImage(sitk.RegionOfInterest(image, extent.tolist(), low.tolist()), str(path), True)
        paths.append(path)
    assert len(paths) == count, "the phantom has fewer labelled organs than crops asked for"
    return paths
