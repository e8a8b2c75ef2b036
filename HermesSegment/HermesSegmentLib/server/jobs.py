"""The job service behind ``hermes-segment serve``: a fair queue, one worker per device slot, the server folder.

A job's life: ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``. Its folder
(``<work dir>/jobs/<id>/``) holds the upload until the job ends, then only the result files,
which appear all at once (written to ``partial/``, renamed to ``results/`` when complete), so a
client never sees half a result. Finished jobs are forgotten and their folders deleted
``keep_results_s`` after they end, or when their client deletes them.

The queue is fair between clients: it serves them in turn, one job each, first come first served
within a client (so one laptop sending 500 cases does not hold back a clinician's single case). A
client is a lane key, its address and the ID its installation sends (:func:`.app.client_lane`).
Nothing here knows HTTP; :mod:`.app` maps the exceptions below to status codes.
"""

from __future__ import annotations

import logging
import os
import statistics
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..errors import CancelledError, HermesError
from ..inference import CancelToken
from ..writers.case import summary_rows
from .protocol import CANCELLED, DONE, FAILED, FINISHED, QUEUED, RUNNING
from .settings import ServerSettings
from .uploads import remove_tree

log = logging.getLogger(__name__)


#: Where each stage of a job lies in its overall progress (start, end), so that one bar moves
#: once from 0 to 1; inference dominates the time.
STAGE_SPANS = {"reading": (0.0, 0.04), "preprocess": (0.04, 0.08), "inference": (0.08, 0.94),
               "postprocess": (0.94, 0.98), "writing": (0.98, 1.0)}
#: Job IDs are 32 hex digits (uuid4); nothing else is looked up.
JOB_ID_LENGTH = 32


class JobNotFound(HermesError):
    """No job with this ID (never existed, deleted, or expired)."""


class ClientLimit(HermesError):
    """The client has its maximum number of unfinished jobs."""


class QueueFull(HermesError):
    """The server's queue is full."""


class ResultNotReady(HermesError):
    """The job has no result (yet, or ever)."""


#: What a worker calls: ``segment(image_path, request, device, progress, cancel) -> result`` and
#: ``write_results(result, folder, request) -> {file name: path}``; :class:`.engine.Engine` has both.
Segmenter = Callable[[Path, Any, str, Callable[[str, float, str], None], CancelToken], Any]
ResultWriter = Callable[[Any, Path, Any], dict[str, Path]]


@dataclass
class Job:
    """One segmentation request and everything the server knows about it."""

    id: str
    client: str
    request: Any
    folder: Path
    input_path: Optional[Path] = None
    created: float = field(default_factory=time.time)
    state: str = QUEUED
    stage: str = QUEUED
    stage_fraction: float = 0.0
    fraction: float = 0.0
    message: str = ""
    device: str = ""
    started: Optional[float] = None
    finished: Optional[float] = None
    error: Optional[str] = None
    files: dict[str, Path] = field(default_factory=dict)
    summary: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cancel: CancelToken = field(default_factory=CancelToken)
    timed_out: bool = False

    def report(self, stage: str, fraction: float, message: str = "") -> None:
        """A ``segment_image`` progress callback: stage fraction -> overall fraction of the job."""
        start, end = STAGE_SPANS.get(stage, (self.fraction, self.fraction))
        fraction = min(max(fraction, 0.0), 1.0)
        self.stage, self.stage_fraction, self.message = stage, fraction, message
        self.fraction = max(self.fraction, start + (end - start) * fraction)


class FairQueue:
    """Round robin over clients, first in first out within a client. Not thread-safe (the service locks)."""

    def __init__(self) -> None:
        self._by_client: OrderedDict[str, deque[Job]] = OrderedDict()

    def __len__(self) -> int:
        return sum(len(jobs) for jobs in self._by_client.values())

    def push(self, job: Job) -> None:
        self._by_client.setdefault(job.client, deque()).append(job)

    def pop(self) -> Optional[Job]:
        """The next job to run: the oldest of the client whose turn it is; that client goes last."""
        for client, jobs in self._by_client.items():
            job = jobs.popleft()
            del self._by_client[client]
            if jobs:
                self._by_client[client] = jobs
            return job
        return None

    def remove(self, job: Job) -> bool:
        jobs = self._by_client.get(job.client)
        if jobs is None or job not in jobs:
            return False
        jobs.remove(job)
        if not jobs:
            del self._by_client[job.client]
        return True

    def order(self) -> list[Job]:
        """The queued jobs in the order they will run."""
        lanes = [list(jobs) for jobs in self._by_client.values()]
        ordered: list[Job] = []
        for depth in range(max((len(lane) for lane in lanes), default=0)):
            ordered.extend(lane[depth] for lane in lanes if depth < len(lane))
        return ordered


class JobService:
    """Queue, workers and storage of a server; ``start()`` before use, ``stop()`` at shutdown.

    ``devices``: torch device names, one group of ``settings.jobs_per_device`` workers each.
    ``segment`` and ``write_results``: see :data:`Segmenter` and :data:`ResultWriter`.
    """

    def __init__(self, settings: ServerSettings, devices: list[str], segment: Segmenter,
                 write_results: ResultWriter) -> None:
        self.settings = settings
        self.devices = devices
        self._segment = segment
        self._write_results = write_results
        self._jobs: dict[str, Job] = {}
        self._queue = FairQueue()
        self._lock = threading.Condition()
        self._stopping = False
        self._stopped = threading.Event()  # wakes the housekeeping thread (the condition wakes workers only)
        self._threads: list[threading.Thread] = []
        self._durations: deque[float] = deque(maxlen=20)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Empty the jobs folder (what a previous run left is unreachable) and start the workers."""
        remove_tree(self.settings.jobs_dir)
        self.settings.jobs_dir.mkdir(parents=True)
        for device in self.devices:
            for slot in range(self.settings.jobs_per_device):
                self._spawn(self._work, device, name=f"hermes-worker-{device}-{slot}")
        self._spawn(self._housekeeping, name="hermes-housekeeping")

    def _spawn(self, target: Callable[..., None], *args: Any, name: str) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self, timeout: float = 30.0) -> None:
        """Cancel what runs, drop what waits, stop the threads, delete the jobs folder."""
        with self._lock:
            self._stopping = True
            for job in self._jobs.values():
                job.cancel.cancel()
            self._lock.notify_all()
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout)
        remove_tree(self.settings.jobs_dir)

    # ------------------------------------------------------------------ requests
    def check_room(self, client: str) -> None:
        """Raise :class:`ClientLimit` or :class:`QueueFull` when a new job of ``client`` would not fit."""
        with self._lock:
            self._check_room(client)

    def _check_room(self, client: str) -> None:
        unfinished = sum(1 for job in self._jobs.values() if job.client == client and job.state not in FINISHED)
        if unfinished >= self.settings.max_jobs_per_client:
            raise ClientLimit(f"you have {unfinished} unfinished jobs on this server, its limit per client; "
                              "wait for one to finish, then submit again")
        if len(self._queue) >= self.settings.max_queued_jobs:
            raise QueueFull(f"the server's queue is full ({len(self._queue)} jobs waiting); try again later")

    def submit(self, client: str, request: Any, store: Callable[[Path], Path]) -> Job:
        """Create a job: ``store(folder)`` puts the upload into the job's new folder and returns
        the image path; then the job is queued. On any error the folder is deleted and nothing is queued."""
        self.check_room(client)
        job_id = uuid.uuid4().hex
        job = Job(id=job_id, client=client, request=request, folder=self.settings.jobs_dir / job_id)
        job.folder.mkdir()
        try:
            job.input_path = store(job.folder)
            with self._lock:
                if self._stopping:
                    raise QueueFull("the server is shutting down; try again later")
                self._check_room(client)
                self._jobs[job.id] = job
                self._queue.push(job)
                self._lock.notify()
        except BaseException:
            remove_tree(job.folder)
            raise
        log.info("job %s queued for %s", job.id, client)
        return job

    def get(self, job_id: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id) if len(job_id) == JOB_ID_LENGTH else None
        if job is None:
            raise JobNotFound(f"no job {job_id[:JOB_ID_LENGTH]!r} on this server (it finished more than "
                              f"{self.settings.keep_results_s:.0f} s ago, was deleted, or never existed)")
        return job

    def cancel(self, job_id: str) -> Job:
        """Stop a job: a queued one leaves the queue, a running one stops within one window batch.
        A finished job is left as it is."""
        job = self.get(job_id)
        with self._lock:
            if job.state == QUEUED and self._queue.remove(job):
                self._finish(job, CANCELLED, error="cancelled by the client")
                remove_tree(job.folder)
            elif job.state == RUNNING:
                job.cancel.cancel()
        return job

    def delete(self, job_id: str) -> None:
        """Cancel the job if it is unfinished and delete it with its files now."""
        job = self.cancel(job_id)
        with self._lock:
            self._jobs.pop(job.id, None)
            if job.state != RUNNING:  # a running job's worker deletes the folder when it stops
                remove_tree(job.folder)

    def result_file(self, job_id: str, name: str) -> Path:
        """Path of result file ``name`` of a finished job (only names the job listed are looked up)."""
        job = self.get(job_id)
        if job.state != DONE:
            raise ResultNotReady(f"job {job.id} is {job.state}; results exist only for a done job"
                                 + (f" ({job.error})" if job.error else ""))
        path = job.files.get(name)
        if path is None:
            raise JobNotFound(f"job {job.id} has no file {name[:80]!r}; its files are: {', '.join(job.files)}")
        return path

    # ------------------------------------------------------------------ status
    def describe(self, job: Job) -> dict[str, Any]:
        """The JSON status of ``job`` (see :class:`.app.JobStatus`)."""
        with self._lock:
            position = eta = None
            if job.state == QUEUED:
                order = self._queue.order()
                position = order.index(job) + 1 if job in order else None
                typical = self._typical_seconds()
                if position is not None and typical is not None:
                    eta = (1 + (position - 1) // max(self.workers, 1)) * typical
            elif job.state == RUNNING and job.started is not None and job.fraction >= 0.05:
                eta = (time.time() - job.started) * (1.0 - job.fraction) / job.fraction
            return {
                "id": job.id, "state": job.state, "stage": job.stage, "stage_fraction": round(job.stage_fraction, 4),
                "fraction": round(job.fraction, 4),
                "message": job.message, "queue_position": position,
                "eta_seconds": None if eta is None else round(eta, 1),
                "device": job.device or None, "error": job.error,
                "created": job.created, "started": job.started, "finished": job.finished,
                "files": sorted(job.files), "summary": job.summary, "warnings": job.warnings,
            }

    @property
    def workers(self) -> int:
        return len(self.devices) * self.settings.jobs_per_device

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"queued": len(self._queue),
                    "running": sum(1 for job in self._jobs.values() if job.state == RUNNING)}

    def _typical_seconds(self) -> Optional[float]:
        return statistics.median(self._durations) if self._durations else None

    # ------------------------------------------------------------------ workers
    def _next(self) -> Optional[Job]:
        with self._lock:
            while not self._stopping:
                job = self._queue.pop()
                if job is not None:
                    job.state, job.started = RUNNING, time.time()
                    return job
                self._lock.wait()
        return None

    def _work(self, device: str) -> None:
        while (job := self._next()) is not None:
            job.device = device
            self._run(job, device)

    def _run(self, job: Job, device: str) -> None:
        partial, results = job.folder / "partial", job.folder / "results"
        assert job.input_path is not None, "submit() stores the upload before queuing"
        try:
            job.report("reading", 0.0, "reading the image")
            result = self._segment(job.input_path, job.request, device, job.report, job.cancel)
            job.report("writing", 0.0, "writing the result")
            partial.mkdir()
            files = self._write_results(result, partial, job.request)
            job.cancel.raise_if_cancelled()
            os.replace(partial, results)
            job.summary = [{key: row[key] for key in ("target", "voxels", "volume_ml")}
                           for row in summary_rows(job.request.name, result)]
            job.warnings = list(getattr(result, "warnings", []))
            self._finish(job, DONE, files={name: results / path.name for name, path in files.items()})
        except CancelledError:
            if job.timed_out:
                self._finish(job, FAILED, error=f"the job ran longer than this server's limit of "
                                                f"{self.settings.job_timeout_s:.0f} s; send a smaller image")
            else:
                self._finish(job, CANCELLED, error="cancelled by the client")
        except HermesError as error:
            message = str(error).replace(str(job.input_path or job.folder), "the uploaded image")
            self._finish(job, FAILED, error=message.replace(str(job.folder), "."))
        except Exception as error:
            log.exception("job %s failed", job.id)
            self._finish(job, FAILED, error=f"unexpected {type(error).__name__} on the server "
                                            "(its log has the details; please report this)")
        finally:
            remove_tree(partial)
            if job.state != DONE or job.id not in self._jobs:
                remove_tree(results)
            if job.input_path is not None:
                remove_tree(job.input_path) if job.input_path.is_dir() else job.input_path.unlink(missing_ok=True)
            if job.id not in self._jobs:  # deleted while it ran
                remove_tree(job.folder)

    def _finish(self, job: Job, state: str, *, error: Optional[str] = None,
                files: Optional[dict[str, Path]] = None) -> None:
        with self._lock:
            job.state, job.error, job.finished = state, error, time.time()
            job.files = files or {}
            if state == DONE:
                job.stage, job.stage_fraction, job.fraction, job.message = DONE, 1.0, 1.0, "done"
                if job.started is not None:
                    self._durations.append(job.finished - job.started)
        log.info("job %s %s%s", job.id, state, f": {error}" if error else "")

    # ------------------------------------------------------------------ housekeeping
    def _housekeeping(self) -> None:
        period = min(30.0, self.settings.keep_results_s / 4, self.settings.job_timeout_s / 4)
        while not self._stopped.wait(period):
            self.sweep()

    def sweep(self, now: Optional[float] = None) -> None:
        """Delete finished jobs older than ``keep_results_s``; stop jobs running longer than ``job_timeout_s``."""
        now = time.time() if now is None else now
        with self._lock:
            for job in list(self._jobs.values()):
                if job.state in FINISHED and job.finished is not None \
                        and now - job.finished > self.settings.keep_results_s:
                    del self._jobs[job.id]
                    remove_tree(job.folder)
                elif job.state == RUNNING and job.started is not None \
                        and now - job.started > self.settings.job_timeout_s:
                    job.timed_out = True
                    job.cancel.cancel()

