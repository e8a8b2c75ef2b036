"""`hermes-segment targets`: what a model can segment, per modality."""

from __future__ import annotations

import argparse

from ..pipeline.options import DEFAULT_MODEL


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("targets", help="list the targets a model offers (per modality)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name or .safetensors file")
    parser.add_argument("--modality", help="only this modality (CT, PET, MR-T1, MR-T2, cine-MR, MR)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .. import vocabulary
    from ..models import read_manifest, resolve
    from ..models.package import LoadedModel

    manifest = read_manifest(resolve(args.model))
    model = LoadedModel(network=None, manifest=manifest)
    modalities = [vocabulary.modality(args.modality).key] if args.modality else model.modality_keys
    for modality in modalities:
        targets = model.targets_for(modality)
        print(f"{modality} ({len(targets)} targets)")
        for key in targets:
            task = model.task(model.task_index(key, modality))
            print(f"  {key:<32} {task['name']:<36} task {task['index']:>3}  ({task['dataset']})")
    return 0
