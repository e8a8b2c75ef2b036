"""`hermes-segment train`: train or fine-tune a Hermes model on nnU-Net/MSD datasets.

    hermes-segment train CONFIG.yaml [--init MODEL] [--resume] [--out DIR] [--data-root DIR]
    hermes-segment train CONFIG.yaml --data-root DIR --prepare PACKED   (preprocess only; then train
        anywhere, without SimpleITK, with --data-root PACKED)
    torchrun --nproc_per_node 4 -m HermesSegmentLib.cli train CONFIG.yaml     (DDP, one or many nodes)

The result is ``OUT/NAME.safetensors`` (EMA weights, manifest with measured validation Dice),
plus ``train_log.csv``, ``validation.json`` and ``checkpoint/`` (for ``--resume``).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from ..errors import HermesError


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers the ``train`` subcommand (``func=run``)."""
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune a model on your datasets (nnU-Net/MSD layout)",
        description="Train one Hermes model on several partially labelled datasets (nnU-Net/MSD layout) "
                    "described by a YAML config; run under torchrun for multi-GPU/multi-node DDP.",
    )
    parser.add_argument("config", help="training config (YAML)")
    parser.add_argument("--init", metavar="MODEL",
                        help="model package (path or catalog name) to fine-tune; new targets get new task priors")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    parser.add_argument("--out", metavar="DIR", help="output folder (default: the config's 'output')")
    parser.add_argument("--data-root", metavar="DIR", help="folder the dataset paths are relative to")
    parser.add_argument("--steps", type=int, metavar="N", help="override the config's number of steps")
    parser.add_argument("--lr", type=float, metavar="LR",
                        help="override the config's peak learning rate (fine-tuning a trained package: "
                             "about 4-10x lower than training from scratch keeps the old tasks)")
    parser.add_argument("--query-consistency", type=float, metavar="W",
                        help="override the config's query_consistency weight (0 turns the term off)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: auto")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="fit the run into this wall-clock budget: after 30 steps it measures its pace and lowers "
                             "the number of steps (schedule included) so that validation and export end in time")
    parser.add_argument("--stop-after", type=int, metavar="STEP",
                        help="pause at this step: write the checkpoint and stop without exporting (--resume goes on)")
    parser.add_argument("--batch-size", type=int, metavar="N", help="override the config's batch size")
    parser.add_argument("--checkpoint-every", type=int, metavar="N", help="override the config's checkpoint interval")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="override the config's number of batch-making worker processes "
                             "(0: in the training process)")
    parser.add_argument("--prepare", metavar="DIR",
                        help="only preprocess the config's training cases into DIR (compact, read without SimpleITK) "
                             "and stop; train from it elsewhere with --data-root DIR")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Trains, validates and exports; returns 0. Config and data mistakes raise HermesError."""
    from ..training import distributed
    from ..training.config import load_config, with_overrides
    from ..training.trainer import Trainer

    if args.time_limit is not None and not args.time_limit > 0:
        raise HermesError(f"--time-limit must be a positive number of seconds, got {args.time_limit}")
    if args.stop_after is not None and args.stop_after < 1:
        raise HermesError(f"--stop-after must be a step number >= 1, got {args.stop_after}")
    config = load_config(args.config, data_root=args.data_root, output=args.out)
    if args.prepare:
        return _prepare(config, args)
    overrides = {"steps": args.steps, "lr": args.lr, "query_consistency": args.query_consistency,
                 "workers": args.workers, "batch_size": args.batch_size, "checkpoint_every": args.checkpoint_every}
    config = with_overrides(config, **{key: value for key, value in overrides.items() if value is not None})
    context = distributed.init(args.device)
    launcher = (f"torchrun --nproc_per_node {context.world_size} -m HermesSegmentLib.cli" if context.distributed
                else "hermes-segment")
    try:
        trainer = Trainer(config, init=args.init, resume=args.resume, context=context,
                          command=f"{launcher} {shlex.join(sys.argv[1:])}")
        path = trainer.fit(time_limit=args.time_limit, stop_after=args.stop_after)
    finally:
        distributed.shutdown(context)
    if path is not None:
        print(path)
    return 0


def _prepare(config, args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..training.prepared import prepare

    def progress(message: str) -> None:
        print(f"prepared: {message}", flush=True)

    for folder in prepare(config, config.data_root, Path(args.prepare).absolute(), progress):
        print(folder)
    return 0
