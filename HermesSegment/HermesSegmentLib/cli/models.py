"""`hermes-segment models`: list, info, verify, add, remove, download, import-upstream."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    from ..models.package import WEIGHT_DTYPES

    parser = subparsers.add_parser("models", help="list, inspect, verify, download and import model packages")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="bundled, downloadable and user models")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(func=run_list)

    info = actions.add_parser("info", help="show a package's manifest summary")
    info.add_argument("model", help="model name or .safetensors file")
    info.add_argument("--json", action="store_true", help="print the whole manifest as JSON")
    info.set_defaults(func=run_info)

    verify = actions.add_parser("verify", help="check a package completely (checksum, manifest, tensors, load)")
    verify.add_argument("model", help="model name or .safetensors file")
    verify.add_argument("--sha256", help="expected SHA-256 (hex)")
    verify.set_defaults(func=run_verify)

    add = actions.add_parser("add", help="copy a package into the user model folder")
    add.add_argument("file", type=Path)
    add.set_defaults(func=run_add)

    remove = actions.add_parser("remove", help="delete a package from the user model folder")
    remove.add_argument("name")
    remove.set_defaults(func=run_remove)

    download = actions.add_parser("download", help="download a catalog model (verified by SHA-256)")
    download.add_argument("name")
    download.set_defaults(func=run_download)

    upstream = actions.add_parser(
        "import-upstream", help="convert upstream's Hermes-R checkpoint (.pth) into a model package"
    )
    upstream.add_argument("checkpoint", type=Path, help="upstream training checkpoint (.pth)")
    upstream.add_argument("--out", type=Path, help="output .safetensors (default: the user model folder, hermes-r)")
    upstream.add_argument("--weights-dtype", choices=tuple(WEIGHT_DTYPES), default="float32",
                          help="how the package stores the weights (default float32; float16 halves the file, "
                               "computation is unchanged: float32 or the run's --precision)")
    upstream.set_defaults(func=run_import_upstream)


def _human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return "-"


def run_list(args: argparse.Namespace) -> int:
    from ..models import list_models, read_manifest, user_models_dir

    rows: list[dict[str, Any]] = []
    for listing in list_models():
        manifest = read_manifest(listing.path) if listing.path is not None and listing.available else None
        rows.append({
            "name": listing.name,
            "source": listing.source,
            "status": "available" if listing.available else ("downloadable" if listing.url else "not installed"),
            "size": listing.size_bytes,
            "modalities": [m["key"] for m in manifest["modalities"]] if manifest else [],
            "targets": len({t["target"] for t in manifest["tasks"]}) if manifest else None,
            "title": manifest["title"] if manifest else listing.title,
            "path": str(listing.path) if listing.path else None,
            "how_to_get": None if listing.available else listing.how_to_get,
            "links": [] if listing.available else [{"title": t, "url": u} for t, u in listing.weights_links],
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'NAME':<16} {'SOURCE':<9} {'STATUS':<14} {'SIZE':>9} {'TARGETS':>7}  MODALITIES")
    for row in rows:
        targets = "-" if row["targets"] is None else str(row["targets"])
        print(f"{row['name']:<16} {row['source']:<9} {row['status']:<14} {_human_size(row['size']):>9} {targets:>7}  "
              f"{', '.join(row['modalities']) or '-'}")
        if row["how_to_get"]:
            print(f"{'':<16} to install: {row['how_to_get']}")
        for link in row["links"]:
            print(f"{'':<16}   {link['title']}: {link['url']}")
    print(f"user model folder: {user_models_dir()}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    from ..models import read_manifest, resolve, weights_dtype

    path = resolve(args.model)
    manifest = read_manifest(path)
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    arch = manifest["architecture"]
    print(f"{manifest['title']}  ({manifest['name']} {manifest['version']})")
    print(f"file:          {path}")
    print(f"intended use:  {manifest['intended_use']}")
    print(f"licence:       {manifest['license']}")
    print(f"architecture:  {arch['name']}, base {arch['base_channels']} channels, "
          f"{arch['num_task_priors']} task-prior rows, {arch['num_modality_slots']} modality slots")
    window, spacing = manifest["input"]["window_size_zyx"], manifest["input"]["spacing_zyx_mm"]
    print(f"weights:       {weights_dtype(path)}")
    print(f"input:         window {'x'.join(map(str, window))} voxels at {'x'.join(map(str, spacing))} mm (z,y,x), LPS")
    metrics = manifest["provenance"].get("metrics") or {}
    dice = metrics.get("test_dice") or metrics.get("validation_dice") or {}
    datasets = manifest["provenance"].get("datasets") or []
    origins: dict[tuple[str, str], set[str]] = {}
    for dataset in datasets:
        for target in dataset["targets"]:
            origins.setdefault((dataset["modality"], target), set()).add(dataset["origin"])
    for modality in manifest["modalities"]:
        targets = manifest["defaults"].get(modality["key"], {})
        scores = dice.get(modality["key"], {})
        listed = ", ".join(_offered(t, scores.get(t), origins.get((modality["key"], t), set()))
                           for t in sorted(targets))
        print(f"  {modality['key']:<8} {len(targets):>2} targets: {listed}")
    if "test_dice" in metrics:
        print(f"measured:      Dice (in brackets) on {sum(metrics['test_cases'].values())} test cases never trained on "
              f"({metrics['test_data']}); offered at >= {metrics['offer_min_dice']}")
    elif dice:
        print("measured:      Dice (in brackets) on the training data's held-out split, in model space")
    if manifest.get("queries"):
        sizes = ", ".join(f"{modality} {len(query)}" for modality, query in manifest["queries"].items())
        print(f"query:         each run asks all the tasks trained together for its modality ({sizes} tasks) and "
              "keeps the asked targets")
    print(f"provenance:    {manifest['provenance']['source']}")
    for number, dataset in enumerate(datasets):
        kind = {"real": "real patients", "synthetic": "synthetic"}.get(dataset["origin"], "origin not stated")
        print(f"{'learned from:' if number == 0 else '':<15}{dataset['name']} ({dataset['modality']}, {kind}, "
              f"{dataset['training_cases']} training cases): {', '.join(dataset['targets'])}")
        if dataset.get("source"):
            print(f"{'':<17}{dataset['source']}")
    return 0


def _offered(target: str, score: float | None, origins: set[str]) -> str:
    """``liver (0.87, synthetic)``: the measured Dice and what the target was learned from."""
    notes = ([f"{score:.2f}"] if score is not None else []) + sorted(origins - {"unknown"})
    return f"{target} ({', '.join(notes)})" if notes else target


def run_verify(args: argparse.Namespace) -> int:
    from ..models import resolve, verify

    report = verify(resolve(args.model), sha256=args.sha256)
    print(f"ok: {report['path']} ({report['name']}, {report['tasks']} tasks, sha256 {report['sha256']})")
    return 0


def run_add(args: argparse.Namespace) -> int:
    from ..models import add

    print(f"added: {add(args.file)}")
    return 0


def run_remove(args: argparse.Namespace) -> int:
    from ..models import remove

    print(f"removed: {remove(args.name)}")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..models import download

    bars: list[tqdm] = []  # made at the first bytes: a request refused before them shows no empty bar

    def progress(done: int, total: int | None) -> None:
        if not bars:
            bars.append(tqdm(unit="B", unit_scale=True, desc=args.name, total=total))
        bars[0].update(done - bars[0].n)

    try:
        path = download(args.name, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    print(f"downloaded and verified: {path}")
    return 0


def run_import_upstream(args: argparse.Namespace) -> int:
    from ..models import import_upstream, user_models_dir

    out = args.out or user_models_dir() / "hermes-r.safetensors"
    path = import_upstream(args.checkpoint, out, dtype=args.weights_dtype)
    print(f"wrote {path}; check it with `hermes-segment models info {path}`")
    return 0
