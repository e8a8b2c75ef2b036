"""Client of ``hermes-segment serve``: what ``segment --server``, the console API and the Slicer panel use.

Needs only ``requests`` (which Slicer bundles) and the standard library: no torch, no FastAPI, so
a laptop without a GPU stack can send its images to the server::

    client = ServerClient("https://segment.example.org", token="...")   # or $HERMES_SEGMENT_TOKEN
    status, files = client.segment(Path("ct.nii.gz"), job_request("CT", "all", name="ct"), Path("out"))

Each request names this installation by a random client ID it keeps (:func:`installation_client_id`),
so that users behind one NAT or proxy address get their own lanes in the server's fair queue.

Every failure is a :class:`HermesError` with one line (the server's own message when it sent
one); a cancelled run raises :class:`CancelledError` after the job was cancelled on the server.
Result files arrive under temporary names and are renamed only once all are complete.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import requests

from ..atomic import atomic_paths
from ..errors import CancelledError, HermesError
from ..pipeline.options import SegmentOptions
from .protocol import (
    API_PREFIX,
    CANCELLED,
    CLIENT_ID_ENV,
    CLIENT_ID_HEADER,
    DEFAULT_CASE_NAME,
    DICOM_ZIP_SUFFIX,
    DONE,
    FAILED,
    IMAGE_SUFFIXES,
    QUEUED,
    SERVER_DECIDES,
    TOKEN_ENV,
    is_client_id,
)

Progress = Callable[[str, float, str], None]
CHUNK = 1 << 20
#: Where an installation keeps its client ID, in the HermesSegment home (``$HERMES_SEGMENT_HOME``).
CLIENT_ID_FILE_NAME = "client-id"


class ServerClient:
    """One server: ``url`` (``http(s)://host:port``) and its bearer ``token`` (default ``$HERMES_SEGMENT_TOKEN``).

    ``timeout``: seconds to wait for the server to answer a request (uploads and downloads may
    take longer, as long as data flows). ``verify``: TLS certificate check (``True``, or a CA
    bundle path for a hospital's own certificate authority). ``client_id``: the ID sent with every
    request (default :func:`installation_client_id`), which the server's fair queue and per-client
    job limit count along with this computer's address; a fairness hint, not an identity (see
    ``server.app.client_lane``). Raises :class:`HermesError` for a malformed one.
    """

    def __init__(self, url: str, token: Optional[str] = None, *, timeout: float = 60.0, poll_interval: float = 0.5,
                 verify: Union[bool, str] = True, client_id: Optional[str] = None) -> None:
        url = (url or "").strip().rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise HermesError(f"server address {url!r} must start with http:// or https:// "
                              "(e.g. https://gpu-server.example.org)")
        token = token or os.environ.get(TOKEN_ENV, "")
        if not token:
            raise HermesError(f"no token for {url}; give the token the server printed at its start "
                              f"(--token, or the environment variable {TOKEN_ENV})")
        self.url, self.timeout, self.poll_interval = url, timeout, poll_interval
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        self._session.headers[CLIENT_ID_HEADER] = checked_client_id(client_id, "client_id") if client_id \
            else installation_client_id()
        self._session.verify = verify
        self._info: Optional[dict[str, Any]] = None

    # ------------------------------------------------------------------ requests
    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", self.timeout)
        try:
            response = self._session.request(method, f"{self.url}{API_PREFIX}{path}", **kwargs)
        except requests.exceptions.SSLError as error:
            raise HermesError(f"TLS check of {self.url} failed ({_reason(error)}); check the address, or give the "
                              "certificate authority's bundle") from None
        except requests.exceptions.Timeout:
            raise HermesError(f"the server at {self.url} did not answer within {self.timeout:.0f} s; "
                              "it may be overloaded, try again later") from None
        except requests.exceptions.ConnectionError as error:
            raise HermesError(f"cannot reach the server at {self.url} ({_reason(error)}); check the address and "
                              "that `hermes-segment serve` runs there") from None
        if response.status_code >= 400:
            raise _error_from(response, self.url)
        return response

    def info(self) -> dict[str, Any]:
        """Version, devices, models (with targets per modality) and limits of the server."""
        self._info = self._request("GET", "/info").json()
        return self._info

    def check(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``{"model", "modality", "targets"}`` that a job ``request`` (see :func:`job_request`)
        resolves to on the server (``"all"`` becomes the list of targets); :class:`HermesError`
        with suggestions otherwise."""
        return self._request("POST", "/check", json=dict(request)).json()

    def submit(self, image: Any, request: Mapping[str, Any]) -> dict[str, Any]:
        """Upload ``image`` and queue a job ``request`` (see :func:`job_request`); returns the job's status.

        ``image``: an image file (NIfTI, NRRD, MHA), a folder holding one DICOM series (zipped
        for the upload), or a SimpleITK image (sent as compressed NRRD).
        """
        with tempfile.TemporaryDirectory(prefix="hermes-upload-") as scratch:
            path = _uploadable(image, Path(scratch))
            limit = (self._info or self.info())["limits"]["max_upload_bytes"]
            size = path.stat().st_size
            if size > limit:
                raise HermesError(f"{_name(image)} is {size / 2**20:.0f} MB, over the server's upload limit of "
                                  f"{limit / 2**20:.0f} MB; crop the image or ask its administrator")
            with open(path, "rb") as file:
                return self._request("POST", "/jobs", files={"image": (path.name, file, "application/octet-stream")},
                                     data={"job": json.dumps(dict(request))}).json()

    def status(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/jobs/{job_id}").json()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._request("POST", f"/jobs/{job_id}/cancel").json()

    def delete(self, job_id: str) -> None:
        """Cancel the job if it still runs and delete it with its files on the server."""
        self._request("DELETE", f"/jobs/{job_id}")

    # ------------------------------------------------------------------ a whole run
    def wait(self, job_id: str, progress: Optional[Progress] = None, cancel: Any = None) -> dict[str, Any]:
        """Poll until the job ends; returns its final status.

        ``progress(stage, fraction of the stage, message)`` as a local run reports it, with
        stage ``"queued"`` while waiting. ``cancel``: anything with a ``cancelled`` attribute (a
        ``CancelToken``); when it turns true the job is cancelled on the server and
        :class:`CancelledError` is raised. A failed job raises :class:`HermesError` with the
        server's reason.
        """
        last = None
        while True:
            if cancel is not None and cancel.cancelled:
                self.cancel(job_id)
                raise CancelledError()
            status = self.status(job_id)
            state = status["state"]
            if state == DONE:
                return status
            if state == FAILED:
                raise HermesError(f"the server could not segment the image: {status['error']}")
            if state == CANCELLED:
                raise CancelledError(f"the job was cancelled on the server: {status.get('error') or 'no reason given'}")
            report = _progress_of(status)
            if progress is not None and report != last:
                progress(*report)
                last = report
            _sleep(self.poll_interval, cancel)

    def download(self, status: Mapping[str, Any], folder: Path, exclude: tuple[str, ...] = ()) -> list[Path]:
        """Download the files of a done job (less ``exclude``) into ``folder``, under their names.

        Atomic as a set: all files are complete before any of them gets its final name.
        """
        names = [name for name in status["files"] if name not in exclude]
        for name in names:  # a server's answer never names a path outside ``folder``
            if not name or name != Path(name).name or name.startswith(".") or "\\" in name:
                raise HermesError(f"the server at {self.url} sent a result file name that is not a plain file name "
                                  f"({name[:80]!r}); is it a HermesSegment server?")
        finals = [folder / name for name in names]
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_paths(finals) as temps:
            for name, temp in zip(names, temps):
                response = self._request("GET", f"/jobs/{status['id']}/files/{name}", stream=True)
                with response, open(temp, "wb") as file:
                    for chunk in response.iter_content(CHUNK):
                        file.write(chunk)
        return finals

    def segment(self, image: Any, request: Mapping[str, Any], folder: Path, progress: Optional[Progress] = None,
                cancel: Any = None, exclude: tuple[str, ...] = ()) -> tuple[dict[str, Any], list[Path]]:
        """Submit, wait, download into ``folder`` (the files the CLI would write for a case called
        ``request["name"]``, less ``exclude``), delete the job on the server.

        Returns the final status (``summary``: voxels and mL per target; ``warnings``) and the files.
        """
        job = self.submit(image, request)
        try:
            status = self.wait(job["id"], progress, cancel)
            return status, self.download(status, folder, exclude)
        finally:
            try:
                self.delete(job["id"])
            except HermesError:
                pass  # the server forgets finished jobs by itself; nothing of the result depends on this


def installation_client_id() -> str:
    """The client ID of this installation: ``$HERMES_SEGMENT_CLIENT_ID``, else the one kept in
    ``<HermesSegment home>/client-id``, made (random) at first use.

    Where that file cannot be written (a read-only home), a new ID serves this process only: the ID
    only spreads jobs fairly, so it never stops a run. Raises :class:`HermesError` for a malformed
    ``$HERMES_SEGMENT_CLIENT_ID``.
    """
    from ..models.catalog import user_home

    if os.environ.get(CLIENT_ID_ENV):
        return checked_client_id(os.environ[CLIENT_ID_ENV], f"${CLIENT_ID_ENV}")
    path = user_home() / CLIENT_ID_FILE_NAME
    try:
        kept = path.read_text(encoding="utf-8").strip()
        if is_client_id(kept):
            return kept
    except (OSError, UnicodeDecodeError):
        pass  # none yet, or unreadable: a new one replaces it
    made = new_client_id()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_paths([path]) as (temp,):
            temp.write_text(made + "\n", encoding="utf-8")
    except OSError:
        pass
    return made


def new_client_id() -> str:
    """A new random client ID (22 URL-safe characters, 128 bits)."""
    return secrets.token_urlsafe(16)


def checked_client_id(client_id: str, source: str) -> str:
    """``client_id`` if it is a well-formed client ID, else :class:`HermesError` naming ``source``."""
    if not is_client_id(client_id):
        raise HermesError(f"{source} must be 8 to 64 letters, digits, '-' or '_' (got {client_id[:80]!r}); "
                          "leave it unset to use this installation's own ID")
    return client_id


def job_request(modality: str, targets: Union[str, Sequence[str]] = "all", options: Optional[SegmentOptions] = None,
                *, format: str = "seg-nrrd", overlap_policy: str = "priority", probabilities: bool = False,
                frame: Optional[int] = None, series: Optional[str] = None,
                name: str = DEFAULT_CASE_NAME) -> dict[str, Any]:
    """The JSON of a job: what `hermes-segment segment` takes for one case. ``options`` must leave the
    device and batch size at their defaults (they are the server's) and name the model by the name
    the server knows it by."""
    options = options or SegmentOptions()
    defaults = SegmentOptions()
    for field_name in SERVER_DECIDES:
        if getattr(options, field_name) != getattr(defaults, field_name):
            raise HermesError(f"{field_name} (--{field_name.replace('_', '-')}) does not apply to a server run: the "
                              "server chooses it; leave it out")
    model = options.model
    if not isinstance(model, str) or Path(model).suffix == ".safetensors" or os.sep in model:
        raise HermesError(f"a server run names one of the server's models (see its /v1/info), not {str(model)!r}")
    fields = {key: value for key, value in dataclasses.asdict(options).items() if key not in SERVER_DECIDES}
    return {"modality": modality, "targets": targets if isinstance(targets, str) else list(targets),
            "options": fields, "format": format, "overlap_policy": overlap_policy, "probabilities": probabilities,
            "frame": frame, "series": series, "name": name}


def _uploadable(image: Any, scratch: Path) -> Path:
    """A file to upload: the image file itself, a zip of a DICOM series folder, or a SimpleITK image as NRRD."""
    if not isinstance(image, (str, Path)):
        import SimpleITK as sitk

        path = scratch / "image.nrrd"
        sitk.WriteImage(image, str(path), True)
        return path
    path = Path(image)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        if not files:
            raise HermesError(f"{path}: empty folder; give an image file or a folder holding a DICOM series")
        archive = scratch / f"series{DICOM_ZIP_SUFFIX}"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zipped:
            for number, file in enumerate(files):
                zipped.write(file, f"{number:05d}.dcm")
        return archive
    if not path.is_file():
        raise HermesError(f"{path}: no such file or folder; check the path")
    if not path.name.lower().endswith(IMAGE_SUFFIXES):
        raise HermesError(f"{path}: a server accepts {', '.join(IMAGE_SUFFIXES)} files or DICOM series folders; "
                          "convert the image first")
    return path


def _progress_of(status: Mapping[str, Any]) -> tuple[str, float, str]:
    if status["state"] == QUEUED:
        eta = status.get("eta_seconds")
        about = f", about {eta:.0f} s" if eta is not None else ""
        return QUEUED, 0.0, f"position {status.get('queue_position') or '?'} in the server's queue{about}"
    return status["stage"], float(status.get("stage_fraction", status["fraction"])), status.get("message", "")


def _sleep(seconds: float, cancel: Any) -> None:
    """Sleep, waking early when ``cancel`` turns true (so Cancel answers within 0.1 s)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (cancel is not None and cancel.cancelled):
        time.sleep(min(0.1, max(deadline - time.monotonic(), 0.0)))


def _error_from(response: requests.Response, url: str) -> HermesError:
    try:
        detail = str(response.json().get("detail", "")).strip()
    except ValueError:
        detail = ""
    detail = detail or response.reason or f"HTTP {response.status_code}"
    if response.status_code == 401:
        return HermesError(f"the server at {url} refused the token ({detail}); check the token its administrator "
                           "gave you")
    if response.status_code == 404 and not detail.startswith("no job"):
        return HermesError(f"{url} does not look like a HermesSegment server (HTTP 404); check the address")
    return HermesError(f"server: {detail}")


def _reason(error: Exception) -> str:
    text = str(error.args[0] if error.args else error)
    for marker in ("Connection refused", "Name or service not known", "timed out", "No route to host",
                   "certificate verify failed", "Connection reset"):
        if marker in text:
            return marker.lower()
    return " ".join(text.split())[:120]


def _name(image: Any) -> str:
    return Path(image).name if isinstance(image, (str, Path)) else "the image"
