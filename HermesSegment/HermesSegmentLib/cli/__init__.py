"""`hermes-segment`: the command line, one file per subcommand group, thin over the library.

Each subcommand module exposes ``add_parser(subparsers)`` (registering its parser with
``func=run``) and ``run(args) -> int``. User mistakes surface as ``error: <one line>`` with exit
status 2; Ctrl-C exits 130 without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ..errors import HermesError

SUBCOMMAND_MODULES = ("models", "targets", "segment", "evaluate", "train", "phantoms")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="hermes-segment",
        description="Universal medical image segmentation with Hermes (CT, PET, MR).",
    )
    parser.add_argument("--version", action="version", version=f"hermes-segment {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as error:
            if error.name != f"{__name__}.{name}":
                raise
            continue
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HermesError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no output was written for the case in progress", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
