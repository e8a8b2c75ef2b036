"""`hermes-segment serve`: run the segmentation server (see README, "Run on a GPU server").

Loads the models once on the chosen devices, then serves the HTTP API of
``HermesSegmentLib.server.app`` with uvicorn until Ctrl-C or SIGTERM. Needs the ``server`` extra.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

from ..errors import HermesError

TLS_ADVICE = """\
This server listens on {host}, beyond this computer. Its traffic is plain HTTP: put it behind a
reverse proxy that speaks HTTPS, for example Caddy, which gets and renews the certificate itself:
    caddy reverse-proxy --from segment.example.org --to 127.0.0.1:{port}
(then start this server with --host 127.0.0.1), or nginx with `proxy_pass http://127.0.0.1:{port};`,
`proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;` and `client_max_body_size {max_mb}m;`.
A proxy on another computer needs --forwarded-allow-ips PROXY_ADDRESS, else every client counts as
the proxy. Give the token to the people who may use this server only."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..pipeline.options import DEFAULT_MODEL
    from ..server.protocol import TOKEN_ENV
    from ..server.settings import ServerSettings

    defaults = ServerSettings(work_dir=Path("."))
    parser = subparsers.add_parser(
        "serve", help="serve segmentation over HTTP (Slicer panels and `segment --server` as clients)",
        description="Serve segmentation jobs over HTTP with a bearer token. Binds to 127.0.0.1 unless --host says "
                    "otherwise; the OpenAPI page is at /docs.")
    parser.add_argument("--host", default=defaults.host,
                        help="address to listen on (default 127.0.0.1, this computer only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=defaults.port,
                        help=f"port (default {defaults.port}; 0: any free port)")
    parser.add_argument("--token", help=f"bearer token clients must send (default: ${TOKEN_ENV}, else the one "
                                        "stored in the work folder, else a new one, printed once)")
    parser.add_argument("--model", action="append", dest="models", metavar="MODEL",
                        help=f"model to offer, by name or .safetensors file; repeat for several "
                             f"(default {DEFAULT_MODEL})")
    parser.add_argument("--device", default="auto",
                        help="where jobs run: auto (a GPU when there is one), cpu, cuda, or a list like cuda:0,cuda:1")
    parser.add_argument("--jobs-per-device", type=int, default=defaults.jobs_per_device,
                        help="jobs running at once on each device (default 1; more only with memory to spare)")
    parser.add_argument("--work-dir", type=Path,
                        help="server folder for uploads, results and the token (default ~/.hermes-segment/server)")
    parser.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_bytes / 2**20,
                        help="largest upload accepted, in MB (default %(default).0f)")
    parser.add_argument("--max-voxels", type=int, default=defaults.max_voxels,
                        help="largest image accepted, in voxels (default %(default)d)")
    parser.add_argument("--max-jobs-per-client", type=int, default=defaults.max_jobs_per_client,
                        help="unfinished jobs allowed per client: its address and the ID its installation sends "
                             "(default %(default)d)")
    parser.add_argument("--max-queued-jobs", type=int, default=defaults.max_queued_jobs,
                        help="jobs allowed to wait in all (default %(default)d)")
    parser.add_argument("--keep-results", type=float, default=defaults.keep_results_s, metavar="SECONDS",
                        help="delete a finished job's files this long after it ended (default %(default).0f)")
    parser.add_argument("--job-timeout", type=float, default=defaults.job_timeout_s, metavar="SECONDS",
                        help="stop a job that runs longer than this (default %(default).0f)")
    parser.add_argument("--upload-timeout", type=float, default=defaults.upload_idle_timeout_s, metavar="SECONDS",
                        help="drop an upload that sends nothing for this long (default %(default).0f)")
    parser.add_argument("--forwarded-allow-ips", default=defaults.forwarded_allow_ips, metavar="IPS",
                        help="reverse proxies whose X-Forwarded-For header names the real client: comma-separated "
                             "addresses or networks (10.0.0.5,10.1.0.0/16), * for any, '' for none (default, as "
                             "uvicorn's: $FORWARDED_ALLOW_IPS, else 127.0.0.1,::1, a proxy on this computer)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from ..server.app import create_app
    except ModuleNotFoundError as error:
        raise HermesError(f"the server needs {error.name}, which is not installed; "
                          "install it with: pip install 'hermes-segment[server]'") from None
    from ..models.catalog import user_home
    from ..pipeline.options import DEFAULT_MODEL
    from ..server.engine import Engine
    from ..server.settings import ServerSettings, check_forwarded_allow_ips, resolve_token

    # Before anything is written (a new token) or loaded (the models).
    if args.forwarded_allow_ips:
        check_forwarded_allow_ips(args.forwarded_allow_ips)
    elif args.forwarded_allow_ips is None and os.environ.get("FORWARDED_ALLOW_IPS"):  # uvicorn's default reads it
        check_forwarded_allow_ips(os.environ["FORWARDED_ALLOW_IPS"], "$FORWARDED_ALLOW_IPS")
    work_dir = _checked_work_dir(args, user_home() / "server")
    settings = ServerSettings(  # checks the limits; the token is found (or made and stored) once they are right
        work_dir=work_dir, host=args.host, port=args.port, models=args.models or [DEFAULT_MODEL],
        devices=[d.strip() for d in args.device.split(",") if d.strip()], jobs_per_device=args.jobs_per_device,
        max_upload_bytes=int(args.max_upload_mb * 2**20), max_voxels=args.max_voxels,
        max_jobs_per_client=args.max_jobs_per_client, max_queued_jobs=args.max_queued_jobs,
        keep_results_s=args.keep_results, job_timeout_s=args.job_timeout, upload_idle_timeout_s=args.upload_timeout,
        forwarded_allow_ips=args.forwarded_allow_ips)
    settings.token, token_source = resolve_token(args.token, work_dir)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    say = lambda text: print(text, flush=True)  # noqa: E731
    say(f"loading {', '.join(settings.models)} on {', '.join(settings.devices)} ...")
    engine = Engine(settings)
    # uvicorn's ProxyHeadersMiddleware puts the client named by a trusted proxy in request.client.
    config = uvicorn.Config(create_app(settings, engine), host=settings.host, port=settings.port, log_level="info",
                            proxy_headers=settings.forwarded_allow_ips != "",
                            forwarded_allow_ips=settings.forwarded_allow_ips or None, timeout_keep_alive=30)
    try:
        sock = config.bind_socket()
    except SystemExit:  # uvicorn exits when the address is taken
        raise HermesError(f"cannot listen on {settings.host}:{settings.port} (in use, or not an address of this "
                          "computer); choose another --port or --host") from None
    port = sock.getsockname()[1]
    say(f"HermesSegment server on {_url(settings.host, port)} ({', '.join(engine.device_names)}; models: "
        f"{', '.join(engine.model_names)}); API docs at /docs")
    if token_source == "new":
        say(f"new token (stored in {work_dir / 'token'}; give it to your users):\n    {settings.token}")
    elif token_source == "file":
        say(f"token: the one stored in {work_dir / 'token'}")
    if config.proxy_headers:
        trusted = ",".join([config.forwarded_allow_ips] if isinstance(config.forwarded_allow_ips, str)
                           else config.forwarded_allow_ips)
        say(f"client addresses: from X-Forwarded-For when the request comes from {trusted} (--forwarded-allow-ips)")
    if not settings.loopback:
        say(TLS_ADVICE.format(host=settings.host, port=port, max_mb=int(args.max_upload_mb) + 1))
    say(f"clients: hermes-segment segment IMAGES --out DIR --modality CT --server {client_url(settings.host, port)} "
        "(token in $HERMES_SEGMENT_TOKEN)")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shuts down on SIGTERM / Ctrl-C, then raises the signal again: a clean stop
        say("server stopped")
    return 0


def _checked_work_dir(args: argparse.Namespace, default: Path) -> Path:
    """The server's folder, once the port and the folder are known to be usable (before anything is written)."""
    if not 0 <= args.port <= 65535:
        raise HermesError(f"--port must be 0..65535 (0: any free port), got {args.port}")
    work_dir = (args.work_dir or default).expanduser().resolve()
    if work_dir.exists() and not work_dir.is_dir():
        raise HermesError(f"--work-dir {work_dir} is a file; give a folder (it is created if needed)")
    return work_dir


def client_url(host: str, port: int) -> str:
    """The URL clients give to reach a server bound to ``host``: a wildcard address (every interface,
    0.0.0.0 or ::) is not one a client can connect to, so this computer's name stands in for it."""
    return _url(socket.getfqdn() if host in ("0.0.0.0", "::") else host, port)


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
