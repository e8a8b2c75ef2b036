"""What a server is allowed to do: address, token, models, devices and limits (one dataclass).

``hermes-segment serve`` fills :class:`ServerSettings` from its options; the job service and the
HTTP app read it; ``GET /v1/info`` publishes the limits so that clients can check a file before
they upload it.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ..atomic import atomic_paths
from ..errors import HermesError
from .protocol import TOKEN_ENV

#: Shorter tokens can be guessed; ``secrets.token_urlsafe(32)`` gives 43 characters.
MIN_TOKEN_LENGTH = 16
TOKEN_FILE_NAME = "token"
MB = 1 << 20
#: The settings in seconds and the `serve` options that set them.
_SECONDS_OPTIONS = {"keep_results_s": "--keep-results", "job_timeout_s": "--job-timeout",
                    "upload_idle_timeout_s": "--upload-timeout"}


@dataclass
class ServerSettings:
    """Options of ``hermes-segment serve`` (the CLI help says what each one means).

    ``devices``: where jobs run, e.g. ``["cuda:0", "cuda:1"]`` or ``["cpu"]``; each device loads
    the models once and runs ``jobs_per_device`` jobs at a time. Sizes are in bytes and voxels,
    times in seconds. ``forwarded_allow_ips``: the reverse proxies whose ``X-Forwarded-For`` names
    the real client, as uvicorn's option of that name takes them (comma-separated addresses and
    networks, ``*`` for any); ``None``: uvicorn's default (``$FORWARDED_ALLOW_IPS``, else this
    computer's loopback addresses); ``""``: none.
    """

    work_dir: Path
    host: str = "127.0.0.1"
    port: int = 8765
    token: str = ""
    models: list[str] = field(default_factory=lambda: ["hermes-demo"])
    devices: list[str] = field(default_factory=lambda: ["auto"])
    jobs_per_device: int = 1
    max_upload_bytes: int = 2048 * MB
    max_voxels: int = 1024 * 1024 * 1024
    max_jobs_per_client: int = 16
    max_queued_jobs: int = 256
    keep_results_s: float = 3600.0
    job_timeout_s: float = 3600.0
    upload_idle_timeout_s: float = 60.0
    forwarded_allow_ips: str | None = None

    def __post_init__(self) -> None:
        for name in ("jobs_per_device", "max_voxels", "max_jobs_per_client", "max_queued_jobs"):
            if getattr(self, name) < 1:
                raise HermesError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.max_upload_bytes < 1:
            raise HermesError(f"--max-upload-mb must be more than 0, got {self.max_upload_bytes / MB:g}")
        for name, option in _SECONDS_OPTIONS.items():
            if not getattr(self, name) > 0:
                raise HermesError(f"{option} must be more than 0 seconds, got {getattr(self, name):g}")
        if not self.models:
            raise HermesError("no model to serve; give at least one --model")
        if self.forwarded_allow_ips:
            check_forwarded_allow_ips(self.forwarded_allow_ips)

    @property
    def jobs_dir(self) -> Path:
        """One sub-folder per job: the upload, then the result files."""
        return self.work_dir / "jobs"

    @property
    def loopback(self) -> bool:
        """True when only this computer can connect."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def public_limits(self) -> dict[str, int | float]:
        """The limits a client must respect, as ``GET /v1/info`` reports them."""
        return {"max_upload_bytes": self.max_upload_bytes, "max_voxels": self.max_voxels,
                "max_jobs_per_client": self.max_jobs_per_client, "max_queued_jobs": self.max_queued_jobs,
                "job_timeout_s": self.job_timeout_s, "keep_results_s": self.keep_results_s}


def check_forwarded_allow_ips(value: str, source: str = "--forwarded-allow-ips") -> None:
    """Raise :class:`HermesError` unless ``value`` is ``*`` or comma-separated IP addresses and
    networks (``10.0.0.5``, ``10.0.0.0/8``, ``::1``). uvicorn itself takes any other entry as a
    literal that no address ever equals, which would silently trust no proxy."""
    if value.strip() == "*":
        return
    for entry in (item.strip() for item in value.split(",")):
        try:
            ipaddress.ip_network(entry) if "/" in entry else ipaddress.ip_address(entry)
        except ValueError as error:
            raise HermesError(f"{source}: {entry!r} is not an IP address or network ({error}); give the "
                              "reverse proxy's address, e.g. 10.0.0.5 or 10.0.0.0/24, or * for any") from None


def resolve_token(given: str | None, work_dir: Path) -> tuple[str, str]:
    """The bearer token: ``given`` (option), else ``$HERMES_SEGMENT_TOKEN``, else the one stored in
    ``work_dir/token``, else a new random one stored there (readable by its owner only).

    Returns ``(token, source)``, source being "option", "environment", "file" or "new". Raises
    :class:`HermesError` for a token shorter than :data:`MIN_TOKEN_LENGTH` characters.
    """
    stored = work_dir / TOKEN_FILE_NAME
    if given:
        token, source = given, "option"
    elif os.environ.get(TOKEN_ENV):
        token, source = os.environ[TOKEN_ENV], "environment"
    elif stored.is_file():
        token, source = stored.read_text(encoding="utf-8").strip(), "file"
    else:
        token, source = secrets.token_urlsafe(32), "new"
        work_dir.mkdir(parents=True, exist_ok=True)
        with atomic_paths([stored]) as (temp,):
            descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(token + "\n")
    if len(token) < MIN_TOKEN_LENGTH or any(c.isspace() for c in token):
        raise HermesError(f"the server token must be at least {MIN_TOKEN_LENGTH} characters without spaces; "
                          f"leave --token and {TOKEN_ENV} unset to have one generated")
    return token, source
