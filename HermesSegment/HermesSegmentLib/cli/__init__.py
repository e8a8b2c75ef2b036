"""`hermes-segment`: the command line, one file per subcommand group, thin over the library.

Each subcommand module exposes ``add_parser(subparsers)`` (registering its parser with
``func=run``) and ``run(args) -> int``. User mistakes surface as ``error: <one line>`` with exit
status 2. SIGTERM (what job schedulers and the Slicer panel's Cancel send) is handled as Ctrl-C:
both raise :class:`Interrupted` (a ``KeyboardInterrupt``), temporary files are removed on the way
out, and the exit status is 128 + the signal number (130, 143), without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from typing import Sequence

from ..errors import HermesError

SUBCOMMAND_MODULES = ("models", "targets", "segment", "evaluate", "train", "phantoms", "serve")


class Interrupted(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's ``KeyboardInterrupt``."""

    signal_number = int(signal.SIGTERM)
    signal_name = "SIGTERM"


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted()


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser with every subcommand, or with ``command``'s only when it names one.

    Only the asked subcommand's module is imported: each imports what it needs (``segment`` the
    image readers and SimpleITK), and ``train`` from a prepared folder runs where SimpleITK is absent.
    """
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="hermes-segment",
        description="Universal medical image segmentation with Hermes (CT, PET, MR).",
    )
    parser.add_argument("--version", action="version", version=f"hermes-segment {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in (command,) if command in SUBCOMMAND_MODULES else SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            continue
        module.add_parser(subparsers)
    return parser


def _asked_command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` asks for: its first word when no option comes before it, else None."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_asked_command(argv))
    args = parser.parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupted) if in_main_thread else None
    try:
        return int(args.func(args) or 0)
    except HermesError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        number = getattr(interrupt, "signal_number", int(signal.SIGINT))
        print(f"error: interrupted by {getattr(interrupt, 'signal_name', 'Ctrl-C')}; no output was written for the "
              "work in progress", file=sys.stderr)
        return 128 + number
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
