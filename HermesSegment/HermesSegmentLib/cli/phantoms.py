"""`hermes-segment phantoms`: write synthetic multi-modality training data or one sample case.

    hermes-segment phantoms --out DIR [--cases-per-dataset N] [--seed S] [--randomization R]
        the partially labelled pseudo-datasets (nnU-Net layout) and DIR/phantom_config.yaml
    hermes-segment phantoms --out DIR --family metaball [--cases-per-dataset N] [--seed S]
        the second, independent phantom family (CT, for evaluating transfer only):
        DIR/Dataset601_MetaballCT and DIR/metaball_config.yaml
    hermes-segment phantoms --out DIR --single MODALITY --name NAME [--seed S]
        DIR/NAME.nii.gz, DIR/NAME_truth.nii.gz (label map) and DIR/NAME_truth.json (used by make demo)
"""

from __future__ import annotations

import argparse

from ..errors import HermesError

# Kept here (not imported from phantoms) so that building the parser stays cheap:
# the generator pulls in numpy, scipy and SimpleITK.
_MODALITIES = ("CT", "MR-T1", "MR-T2", "PET")
_REGIONS = ("torso", "thorax", "abdomen", "abdomen_pelvis")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers the ``phantoms`` subcommand (``func=run``)."""
    parser = subparsers.add_parser(
        "phantoms",
        help="generate synthetic CT/MR/PET torso phantoms (training data, demo cases)",
        description="Generate procedural torso phantoms: the partially labelled pseudo-datasets "
                    "the demo model is trained on, or one case with its truth label map. "
                    "Synthetic data, not real patients.",
    )
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument("--cases-per-dataset", type=int, default=8, metavar="N",
                        help="cases in each pseudo-dataset (default 8)")
    parser.add_argument("--seed", type=int, default=0, help="base random seed (default 0)")
    parser.add_argument("--single", metavar="MODALITY",
                        help=f"write one case of this modality instead ({', '.join(_MODALITIES)})")
    parser.add_argument("--name", help="file name stem of the --single case, e.g. sample_ct")
    parser.add_argument("--region", default="torso",
                        help=f"z-extent of the --single case ({', '.join(_REGIONS)}; default torso)")
    parser.add_argument("--max-voxels", type=int, default=None, metavar="N",
                        help="cap on voxels per case (default 3000000; cases are coarsened to fit)")
    parser.add_argument("--family", choices=("standard", "metaball"), default="standard",
                        help="standard: the training phantoms (default); metaball: a second, independent CT "
                             "family written only to evaluate how a model transfers")
    parser.add_argument("--randomization", type=float, default=0.0, metavar="R",
                        help="domain randomisation, 0 (default: the standard phantoms) to 1: organ shapes, "
                             "positions, intensities, contrast, noise, blur and bias vary far more (for training)")
    parser.set_defaults(func=run)
    return parser


def run(args: argparse.Namespace) -> int:
    """Writes the phantoms; returns the exit status (0). Bad arguments raise HermesError."""
    _check_arguments(args)

    from tqdm import tqdm

    from .. import phantoms

    if args.family == "metaball":
        from ..phantoms.metaball import write_metaball_dataset

        with tqdm(total=args.cases_per_dataset, unit="case", desc="phantoms") as bar:
            written = write_metaball_dataset(args.out, args.cases_per_dataset, args.seed,
                                             progress=lambda message: bar.update(1))
        for path in written:
            print(path)
        return 0

    cap = {} if args.max_voxels is None else {"max_voxels": args.max_voxels}
    if args.single is not None:
        paths = phantoms.write_single_case(args.out, args.name, args.single, seed=args.seed,
                                           region=args.region, randomization=args.randomization, **cap)
        for path in paths:
            print(path)
        return 0
    total = args.cases_per_dataset * len(phantoms.PSEUDO_DATASETS)
    with tqdm(total=total, unit="case", desc="phantoms") as bar:
        def progress(message: str) -> None:
            bar.set_postfix_str(message)
            bar.update(1)

        written = phantoms.write_pseudo_datasets(args.out, cases_per_dataset=args.cases_per_dataset,
                                                 seed=args.seed, randomization=args.randomization,
                                                 progress=progress, **cap)
    for path in written:
        print(path)
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    if (args.single is None) != (args.name is None):
        raise HermesError("--single and --name go together: --single MODALITY --name NAME")
    if args.single is not None and args.single not in _MODALITIES:
        raise HermesError(f"unknown modality {args.single!r} for --single; choose one of "
                          f"{', '.join(_MODALITIES)}")
    if args.name is not None and (not args.name or "/" in args.name or "\\" in args.name):
        raise HermesError(f"--name must be a plain file name stem, got {args.name!r}")
    if args.region not in _REGIONS:
        raise HermesError(f"unknown --region {args.region!r}; choose one of {', '.join(_REGIONS)}")
    if args.cases_per_dataset < 1:
        raise HermesError(f"--cases-per-dataset must be at least 1, got {args.cases_per_dataset}")
    if args.max_voxels is not None and args.max_voxels < 1000:
        raise HermesError(f"--max-voxels must be at least 1000, got {args.max_voxels}")
    if not 0.0 <= args.randomization <= 1.0:
        raise HermesError(f"--randomization must be between 0 and 1, got {args.randomization}")
    if args.family == "metaball" and (args.single is not None or args.randomization):
        raise HermesError("--family metaball writes one CT dataset; it takes neither --single nor --randomization")
