"""The HTTP API of ``hermes-segment serve`` (FastAPI; the OpenAPI page is at ``/docs``).

Version 1, every route under ``/v1`` and behind the bearer token:

====================================  =========================================================
``GET /v1/info``                      version, devices, models with their targets per modality, limits
``POST /v1/check``                    a JobRequest (JSON) -> the model, modality and targets it resolves to
``POST /v1/jobs``                     multipart: ``image`` (NIfTI/NRRD/MHA, or .zip of one DICOM
                                      series) and ``job`` (a JobRequest as JSON) -> 202
``GET /v1/jobs/{id}``                 state, stage, fraction, ETA, queue position, files, summary
``GET /v1/jobs/{id}/files/{name}``    one result file (names from the status' ``files``)
``POST /v1/jobs/{id}/cancel``         stop a queued or running job
``DELETE /v1/jobs/{id}``              cancel if needed, then delete the job and its files now
====================================  =========================================================

Errors are ``{"detail": "<one line: what is wrong and what to do>"}`` with 400 (a request the
server cannot serve: unknown model, modality or target, unreadable image), 401 (token), 404 (no
such job or file), 408 (upload stalled), 409 (no result yet), 413 (too large), 422 (a request that
does not fit the schema), 429 (too many jobs of this client), 503 (queue full).

The token and the upload size are checked by :class:`RequestGuard` before the body is read, so a
caller without the token cannot make the server store or run anything. The fair queue and the
per-client job limit count a job under its :func:`client_lane`: the caller's address (the real
client's behind a reverse proxy trusted with ``--forwarded-allow-ips``) and the client ID it sends.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from contextlib import asynccontextmanager
from typing import Annotated, Any, AsyncIterator, Awaitable, Callable, Optional

from fastapi import APIRouter, Depends, FastAPI, File, Form, HTTPException, Path, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from .. import __version__
from ..errors import HermesError
from .engine import Engine, JobRequest, MalformedRequest, parse_request
from .jobs import ClientLimit, JobNotFound, JobService, QueueFull, ResultNotReady
from .protocol import API_PREFIX, API_VERSION, CLIENT_ID_HEADER, is_client_id
from .settings import ServerSettings
from .uploads import UploadTooLarge, store_upload

log = logging.getLogger(__name__)

#: Room in a request body for the multipart framing and the options around the image.
FORM_OVERHEAD_BYTES = 64 << 10

STATUS_OF_ERROR: dict[type, int] = {JobNotFound: 404, ResultNotReady: 409, UploadTooLarge: 413, MalformedRequest: 422,
                                    ClientLimit: 429, QueueFull: 503}

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class ModelInfo(BaseModel):
    name: str
    title: str
    version: Optional[str]
    targets: dict[str, list[str]]


class ServerInfo(BaseModel):
    service: str
    version: str
    api_version: int
    devices: list[str]
    jobs_per_device: int
    models: list[ModelInfo]
    limits: dict[str, int | float]  # counts and bytes stay integers in the JSON
    queue: dict[str, int]


class CheckedRequest(BaseModel):
    model: str
    modality: str
    targets: list[str]


class JobStatus(BaseModel):
    id: str
    state: str
    stage: str
    stage_fraction: float
    fraction: float
    message: str
    queue_position: Optional[int]
    eta_seconds: Optional[float]
    device: Optional[str]
    error: Optional[str]
    created: float
    started: Optional[float]
    finished: Optional[float]
    files: list[str]
    summary: list[dict[str, Any]]
    warnings: list[str]


class RequestGuard:
    """ASGI middleware: refuses a request under ``/v1`` without the token (401) or with a body
    over ``max_body`` bytes (413) before any of the body is read, and one whose body stalls for
    ``idle_timeout`` seconds (408)."""

    def __init__(self, app: ASGIApp, *, token: str, max_body: int, idle_timeout: float) -> None:
        self.app, self.token, self.max_body, self.idle_timeout = app, token, max_body, idle_timeout

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            return await self.app(scope, receive, send)
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        if not token_matches(headers.get("authorization", ""), self.token):
            return await _send_error(send, 401, "missing or wrong token; send the header "
                                                "'Authorization: Bearer <token>' that the server printed at start",
                                     {"WWW-Authenticate": "Bearer"})
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body:
            return await _send_error(send, 413, f"the request ({int(length) / 2**20:.0f} MB) is over this server's "
                                                f"upload limit of {self.max_body / 2**20:.0f} MB")
        received, body_done = 0, False

        async def guarded_receive() -> dict:
            nonlocal received, body_done
            if body_done:  # after the body, receive() waits for a disconnect: no timeout then
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"no data for {self.idle_timeout:.0f} s during the upload; "
                                         "check the connection and send again") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_body:
                    raise HTTPException(413, f"the request is over this server's upload limit of "
                                             f"{self.max_body / 2**20:.0f} MB")
            return message

        await self.app(scope, guarded_receive, send)


def token_matches(authorization: str, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    scheme, _, given = authorization.partition(" ")
    return scheme.lower() == "bearer" and secrets.compare_digest(given.strip().encode(), token.encode())


async def _send_error(send: Callable[[dict], Awaitable[None]], status: int, detail: str,
                      headers: Optional[dict[str, str]] = None) -> None:
    response = JSONResponse({"detail": detail}, status_code=status, headers=headers)
    body = response.body
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": body})


def client_lane(address: str, client_id: Optional[str]) -> str:
    """The lane of the fair queue and of the per-client job limit that a job belongs to:
    ``"<address> <client ID>"`` when the request's :data:`.protocol.CLIENT_ID_HEADER` holds a
    well-formed ID (:data:`.protocol.CLIENT_ID_PATTERN`), else ``address`` alone (no header, or a
    forged or oversized one).

    ``address`` is the request's peer, or behind a reverse proxy trusted with ``serve
    --forwarded-allow-ips`` the client that the proxy names in ``X-Forwarded-For`` (uvicorn's
    ProxyHeadersMiddleware puts it in the request). The ID tells apart the users behind one NAT or
    proxy address, whom the address alone would put in one lane under one job limit.

    The ID is a fairness hint, not a security boundary: every client holds the same bearer token
    and may send any ID, so a client that sends many IDs gets many lanes. It grants nothing else:
    jobs are reached by their unguessable IDs, whatever the lane.
    """
    if is_client_id(client_id):
        return f"{address} {client_id}"
    return address


def one_line(text: str) -> str:
    return " ".join(str(text).split())


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    return JSONResponse({"detail": one_line(error.detail)}, status_code=error.status_code, headers=error.headers)


async def _malformed(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    first = error.errors()[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "request"
    return JSONResponse({"detail": one_line(f"{where}: {first.get('msg', 'invalid')}")}, status_code=422)


async def _refused(request: Request, error: Exception) -> JSONResponse:
    status = next((code for kind, code in STATUS_OF_ERROR.items() if isinstance(error, kind)), 400)
    headers = {"Retry-After": "30"} if status in (429, 503) else None
    return JSONResponse({"detail": one_line(str(error))}, status_code=status, headers=headers)


async def _crashed(request: Request, error: Exception) -> JSONResponse:
    log.exception("request %s %s failed", request.method, request.url.path, exc_info=error)
    return JSONResponse({"detail": f"unexpected {type(error).__name__} on the server (its log has the details; "
                                   "please report this)"}, status_code=500)


# ---------------------------------------------------------------------------------------- routes
# What a route needs comes from the app's state (set by create_app), as FastAPI dependencies.
def _settings(request: Request) -> ServerSettings:
    return request.app.state.settings


def _engine(request: Request) -> Engine:
    return request.app.state.engine


def _service(request: Request) -> JobService:
    return request.app.state.service


Settings = Annotated[ServerSettings, Depends(_settings)]
Engine_ = Annotated[Engine, Depends(_engine)]
Service = Annotated[JobService, Depends(_service)]
JobId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$", description="job ID as returned by POST /v1/jobs")]
_bearer = HTTPBearer(auto_error=False, description="the token `hermes-segment serve` printed at start")


def _require_token(settings: Settings,
                   credentials: Annotated[Optional[HTTPAuthorizationCredentials], Depends(_bearer)]) -> None:
    # RequestGuard has already refused a missing or wrong token; this also declares the scheme in OpenAPI.
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), settings.token.encode()):
        raise HTTPException(401, "missing or wrong token", headers={"WWW-Authenticate": "Bearer"})


router = APIRouter(prefix=API_PREFIX, dependencies=[Depends(_require_token)])


@router.get("/info", response_model=ServerInfo, summary="Server version, devices, models, limits")
def info(settings: Settings, engine: Engine_, service: Service) -> dict[str, Any]:
    return {"service": "hermes-segment", "version": __version__, "api_version": API_VERSION,
            "devices": engine.device_names, "jobs_per_device": settings.jobs_per_device,
            "models": engine.describe_models(), "limits": settings.public_limits(), "queue": service.counts()}


@router.post("/check", response_model=CheckedRequest, summary="Check a job request without an image")
def check(job: JobRequest, engine: Engine_) -> dict[str, Any]:
    return engine.check(job)


@router.post("/jobs", status_code=202, response_model=JobStatus, summary="Submit an image to segment")
def submit(request: Request, response: Response, settings: Settings, engine: Engine_, service: Service,
           image: Annotated[UploadFile, File(description="NIfTI, NRRD or MHA image, or a .zip of one DICOM series")],
           job: Annotated[str, Form(description="a JobRequest as JSON (its schema: POST /v1/check)")]) -> dict:
    job_request = parse_request(job)
    engine.check(job_request)
    client = client_lane(request.client.host if request.client else "unknown", request.headers.get(CLIENT_ID_HEADER))
    submitted = service.submit(client, job_request, lambda folder: store_upload(
        image.file, image.filename or "", folder, max_bytes=settings.max_upload_bytes,
        max_voxels=settings.max_voxels))
    response.headers["Location"] = f"{API_PREFIX}/jobs/{submitted.id}"
    return service.describe(submitted)


@router.get("/jobs/{job_id}", response_model=JobStatus, summary="Job state and progress")
def status(job_id: JobId, service: Service) -> dict:
    return service.describe(service.get(job_id))


@router.get("/jobs/{job_id}/files/{name}", response_class=FileResponse, summary="Download one result file")
def download(job_id: JobId, name: str, service: Service) -> FileResponse:
    return FileResponse(service.result_file(job_id, name), media_type="application/octet-stream", filename=name)


@router.post("/jobs/{job_id}/cancel", response_model=JobStatus, summary="Cancel a queued or running job")
def cancel(job_id: JobId, service: Service) -> dict:
    return service.describe(service.cancel(job_id))


@router.delete("/jobs/{job_id}", status_code=204, summary="Cancel if needed, then delete the job and its files")
def delete(job_id: JobId, service: Service) -> Response:
    service.delete(job_id)
    return Response(status_code=204)


def create_app(settings: ServerSettings, engine: Engine) -> FastAPI:
    """The ASGI application: routes, token check, limits, one-line JSON errors; the workers start with it."""
    service = JobService(settings, engine.devices, engine.segment, engine.write_results)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, service.stop)

    app = FastAPI(title="HermesSegment server", version=__version__, lifespan=lifespan,
                  description="Segment CT, PET and MR images with Hermes on this server's GPU. "
                              "Every /v1 route needs the header `Authorization: Bearer <token>`.")
    app.state.settings, app.state.engine, app.state.service = settings, engine, service
    app.add_middleware(RequestGuard, token=settings.token, max_body=settings.max_upload_bytes + FORM_OVERHEAD_BYTES,
                       idle_timeout=settings.upload_idle_timeout_s)
    for kind, handler in ((HTTPException, _http_error), (RequestValidationError, _malformed),
                          (HermesError, _refused), (Exception, _crashed)):
        app.add_exception_handler(kind, handler)
    app.include_router(router)
    return app
