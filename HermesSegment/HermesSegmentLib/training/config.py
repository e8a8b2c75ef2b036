"""The training configuration (YAML): what to train on, the network's shape, and the schedule.

A complete example (paths relative to the YAML file, or to ``data_root`` when given)::

    name: my-abdomen-model            # model package name (lower case, digits, . _ -)
    title: My abdominal CT/MR model
    data_root: /data/nnunet_raw       # optional; dataset paths are relative to it
    datasets:
      - name: AbdomenCT
        path: Dataset501_AbdomenCT     # nnU-Net / MSD layout: imagesTr/, labelsTr/
        modality: CT
        labels: {1: liver, 2: [liver_tumor, liver], 3: spleen}   # a value may belong to several targets
        weight: 1.0
        splits: [train]                # optional: only cases whose cases.json 'split' is listed
        origin: real                   # optional: real (patients) or synthetic; shown by `models info`
        source: "Where the data comes from, its citation and licence"   # optional, into the manifest
    model: {base_channels: 16, blocks_per_stage: [1, 1, 1, 1], fusion_depths: [1, 1, 1, 1, 1], head_dim: 16}
    window: [96, 96, 96]
    spacing: [1.5, 1.5, 1.5]
    steps: 20000
    batch_size: 2
    lr: 0.0003
    weights_dtype: float16            # optional: the package stores half-precision weights (half the file)

Every mistake is reported as a one-line :class:`HermesError` naming the key and what to do.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import yaml

from .. import vocabulary
from ..errors import HermesError
from ..models.manifest import default_normalization
from ..models.package import WEIGHT_DTYPES
from ..network import HermesConfig

# Keys a config may hold at the top level (anything else is a typo we should report).
_TOP_KEYS = {
    "name", "title", "version", "description", "license", "intended_use", "demo", "data_root", "output",
    "datasets", "model", "window", "spacing", "steps", "batch_size", "lr", "weight_decay", "warmup_steps",
    "ema_decay", "seed", "val_fraction", "val_overlap", "checkpoint_every", "log_every", "foreground_fraction",
    "max_queries", "augment", "medcontext", "medcontext_weight", "medcontext_mask_ratio",
    "medcontext_patch", "offer_min_dice", "cache_dir", "query_consistency", "workers", "slab_fraction",
    "normalization", "recall_weight", "recall_until", "query", "weights_dtype",
}
# What each crop asks the network (``query``): see TrainingConfig.query.
QUERIES = ("annotated_subset", "modality")
_DATASET_KEYS = {"name", "path", "modality", "labels", "weight", "splits", "origin", "source"}
# What a dataset's images are: scans of real patients, or generated (phantoms, simulations).
ORIGINS = ("real", "synthetic")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the config. ``labels``: label value (>= 1) -> the target keys it belongs to.
    ``splits``: keep only the cases whose ``split`` in the dataset's ``cases.json`` is one of these
    (empty: every case). ``origin`` ("real" or "synthetic") and ``source`` (attribution, licence)
    go into the exported manifest's provenance."""

    name: str
    path: Path
    modality: str
    labels: dict[int, tuple[str, ...]]
    weight: float = 1.0
    splits: tuple[str, ...] = ()
    origin: str | None = None
    source: str = ""

    @property
    def targets(self) -> tuple[str, ...]:
        """Annotated target keys, in order of first appearance."""
        seen: dict[str, None] = {}
        for keys in self.labels.values():
            seen.update(dict.fromkeys(keys))
        return tuple(seen)


@dataclass(frozen=True)
class TrainingConfig:
    """A validated training config; see the module docstring for the YAML form."""

    datasets: tuple[DatasetSpec, ...]
    network: HermesConfig
    output: Path
    cache_dir: Path
    # The keys the YAML's ``model`` spelled out: with ``--init`` they may only grow the package's network.
    model_keys: frozenset[str] = frozenset()
    name: str = "my-hermes-model"
    title: str = "Hermes model trained with hermes-segment train"
    version: str = "1.0"
    description: str = ""
    license: str = "Apache-2.0"
    intended_use: str = "Research use only; not a medical device; not for clinical decisions."
    demo: bool = False
    window: tuple[int, int, int] = (96, 96, 96)
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5)
    steps: int = 1000
    batch_size: int = 2
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_steps: int = 50
    ema_decay: float = 0.99
    seed: int = 0
    val_fraction: float = 0.15
    val_overlap: float = 0.5
    checkpoint_every: int = 200
    log_every: int = 10
    foreground_fraction: float = 0.33
    max_queries: int = 0  # query: annotated_subset pads to this; 0: the most targets a dataset annotates
    augment: bool = True
    medcontext: bool = False
    medcontext_weight: float = 1.0
    medcontext_mask_ratio: float = 0.4
    medcontext_patch: int = 8
    offer_min_dice: float | None = None  # None: offer every trained (modality, target)
    query_consistency: float = 0.0  # weight of the two-query consistency term; 0: off
    # "modality": each crop asks every task trained for its modality (its case's unannotated ones
    # without loss), the same query the engine then asks, written to the manifest's "queries";
    # "annotated_subset": a random subset of the case's annotated targets (models up to 1.3).
    # Voxels attend over all queried priors, so a network trained on subsets of one dataset's
    # targets and asked all of a modality's at once gives worse masks (docs/experiments.md, 6h).
    query: str = "modality"
    workers: int = 0  # batch-making worker processes (0: batches are made in the training process)
    slab_fraction: float = 0.0  # crops cut to a random slab, as a partial scan looks to the sliding window
    recall_weight: float = 0.0  # weight of the mean BCE over a target's own voxels (losses.per_task_losses)
    # The fraction of the run's steps with the recall term on; off after: it finds new organs, and
    # then leaves their masks too large (docs/experiments.md, section 6j).
    recall_until: float = 1.0
    # Intensity normalisation per modality, as the manifest writes it (e.g. {"CT": {"method":
    # "clip_scale", ...}}); a modality not listed gets its fine-tuned package's, else the default.
    normalization: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    data_root: Path = Path(".")  # the folder dataset paths are relative to
    weights_dtype: str = "float32"  # how the exported package stores its weights (models.WEIGHT_DTYPES)

    @property
    def targets(self) -> tuple[str, ...]:
        """All annotated target keys, in order of first appearance across datasets."""
        seen: dict[str, None] = {}
        for dataset in self.datasets:
            seen.update(dict.fromkeys(dataset.targets))
        return tuple(seen)

    def normalization_for(self, modality: str) -> dict[str, Any]:
        """The normalisation training applies to (and the manifest records for) ``modality``."""
        return dict(self.normalization.get(modality) or default_normalization(modality))

    def recall_weight_at(self, step: int) -> float:
        """The recall term's weight at ``step`` (0-based) of a ``steps``-step run: ``recall_weight``
        for the first ``recall_until`` of the steps, 0 after."""
        return self.recall_weight if step < self.recall_until * self.steps else 0.0

    @property
    def queries_per_sample(self) -> int:
        return self.max_queries or max(len(d.targets) for d in self.datasets)


def load_config(path: str | Path, *, data_root: str | Path | None = None, output: str | Path | None = None,
                check_paths: bool = True) -> TrainingConfig:
    """Read and validate a training YAML. ``data_root``/``output`` override the file's values."""
    path = Path(path)
    if not path.is_file():
        raise HermesError(f"training config not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        line = getattr(getattr(error, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise HermesError(f"{path.name}: not valid YAML{where}; check indentation and colons") from None
    if not isinstance(raw, dict):
        raise HermesError(f"{path.name}: expected a mapping with a 'datasets' list at the top level")
    return parse_config(raw, base=path.parent, data_root=data_root, output=output, check_paths=check_paths,
                        source=path)


def with_overrides(config: TrainingConfig, **values: Any) -> TrainingConfig:
    """``config`` with some fields replaced (command-line overrides), checked like the file's values."""
    config = replace(config, **values)
    _check_values(config, "command line")
    return config


def parse_config(raw: Mapping[str, Any], *, base: Path, data_root: str | Path | None = None,
                 output: str | Path | None = None, check_paths: bool = True,
                 source: Path | None = None) -> TrainingConfig:
    """Validate a config mapping; relative paths resolve against ``base`` (the YAML's folder)."""
    name = source.name if source else "config"
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise HermesError(f"{name}: unknown key '{unknown[0]}'; valid keys: {', '.join(sorted(_TOP_KEYS))}")
    root = Path(data_root) if data_root is not None else base / str(raw.get("data_root", "."))
    root = root if root.is_absolute() else (Path.cwd() / root)
    entries = raw.get("datasets")
    if not isinstance(entries, list) or not entries:
        raise HermesError(f"{name}: 'datasets' must be a non-empty list of {{name, path, modality, labels}}")
    datasets = tuple(_parse_dataset(e, i, root, name, check_paths) for i, e in enumerate(entries))
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise HermesError(f"{name}: two datasets are named '{next(n for n in names if names.count(n) > 1)}'; names "
                          "must differ")

    model = dict(raw.get("model") or {})
    known = set(HermesConfig.__dataclass_fields__) - {"num_task_priors"}
    bad = sorted(set(model) - known)
    if bad:
        raise HermesError(f"{name}: unknown model key '{bad[0]}'; valid: {', '.join(sorted(known))}")
    model = {k: tuple(v) if isinstance(v, list) else v for k, v in model.items()}
    targets = list(dict.fromkeys(t for d in datasets for t in d.targets))
    network = HermesConfig(num_task_priors=len(targets), **model)

    out = Path(output) if output is not None else base / str(raw.get("output", "runs/" + str(raw.get("name", "model"))))
    out = out if out.is_absolute() else Path.cwd() / out
    if check_paths and out.exists() and not out.is_dir():
        raise HermesError(f"{name}: the output {out} is a file; give a folder (--out or 'output'; it is created if "
                          "needed)")
    cache = raw.get("cache_dir")
    cache_dir = (base / str(cache)) if cache else out / "cache"
    structured = {"datasets", "model", "data_root", "output", "cache_dir", "window", "spacing", "normalization"}
    scalars = {k: raw[k] for k in raw if k not in structured}
    normalization = _parse_normalization(raw.get("normalization"), name)
    config = TrainingConfig(
        datasets=datasets, network=network, model_keys=frozenset(model), output=out.resolve(),
        cache_dir=cache_dir.resolve(), data_root=root,
        normalization=normalization,
        window=_triple(raw.get("window", (96, 96, 96)), "window", name, int),
        spacing=_triple(raw.get("spacing", (1.5, 1.5, 1.5)), "spacing", name, float),
        **scalars,
    )
    _check_values(config, name)
    return config


def _parse_dataset(entry: Any, i: int, root: Path, name: str, check_paths: bool) -> DatasetSpec:
    where = f"{name}: datasets[{i}]"
    if not isinstance(entry, dict):
        raise HermesError(f"{where}: expected a mapping with name, path, modality, labels")
    unknown = sorted(set(entry) - _DATASET_KEYS)
    if unknown:
        raise HermesError(f"{where}: unknown key '{unknown[0]}'; valid keys: {', '.join(sorted(_DATASET_KEYS))}")
    missing = [k for k in ("name", "path", "modality", "labels") if k not in entry]
    if missing:
        raise HermesError(f"{where}: missing '{missing[0]}'")
    ds_name = str(entry["name"])
    where = f"{name}: dataset '{ds_name}'"
    folder = Path(str(entry["path"]))
    folder = folder if folder.is_absolute() else root / folder
    prepared = (folder / "prepared.json").is_file()  # a folder written by `train --prepare`
    if check_paths:
        _check_dataset_folder(folder, root, where, prepared)
    modality = vocabulary.modality(str(entry["modality"])).key
    labels = _parse_labels(entry["labels"], where)
    weight = entry.get("weight", 1.0)
    if not isinstance(weight, (int, float)) or weight <= 0:
        raise HermesError(f"{where}: 'weight' must be a positive number, got {weight!r}")
    splits = _parse_splits(entry.get("splits", []), folder, where, check_paths and not prepared)
    origin = entry.get("origin")
    if origin is not None and origin not in ORIGINS:
        raise HermesError(f"{where}: 'origin' must be one of {', '.join(ORIGINS)}, got {origin!r}")
    source = entry.get("source", "")
    if not isinstance(source, str):
        raise HermesError(f"{where}: 'source' must be text (where the data comes from, its citation and licence)")
    # Absolute but links kept: a prepared copy (`train --prepare`) mirrors the path under the data root.
    return DatasetSpec(name=ds_name, path=Path(os.path.abspath(folder)), modality=modality, labels=labels,
                       weight=float(weight), splits=splits, origin=origin, source=source.strip())


def _parse_splits(value: Any, folder: Path, where: str, need_cases_file: bool) -> tuple[str, ...]:
    """A dataset's ``splits``: names of the cases.json splits to keep (empty: all cases)."""
    splits = [value] if isinstance(value, str) else value
    if not isinstance(splits, list) or not all(isinstance(s, str) and s for s in splits):
        raise HermesError(f"{where}: 'splits' must be a list of split names from the dataset's cases.json, "
                          "e.g. [train]")
    if splits and need_cases_file and not (folder / "cases.json").is_file():
        raise HermesError(f"{where}: 'splits' needs a cases.json in {folder} giving each case its 'split'")
    return tuple(splits)


def _parse_normalization(value: Any, name: str) -> dict[str, dict[str, Any]]:
    """The config's ``normalization``: {modality key: manifest normalisation entry}."""
    value = value or {}
    if not isinstance(value, dict) or not all(isinstance(v, dict) and "method" in v for v in value.values()):
        raise HermesError(f"{name}: 'normalization' must map modalities to {{method: ..., ...}} entries")
    for modality, entry in value.items():
        for key in ("clip", "percentiles"):  # reversed, it fails only when the trained model is exported
            low_high = entry.get(key)
            if low_high is not None and not (isinstance(low_high, list) and len(low_high) == 2
                                             and all(isinstance(x, (int, float)) for x in low_high)
                                             and low_high[0] < low_high[1]):
                raise HermesError(f"{name}: normalization of {modality}: '{key}' must be [low, high], got {low_high}")
    return {vocabulary.modality(str(k)).key: dict(v) for k, v in value.items()}


def _check_dataset_folder(folder: Path, root: Path, where: str, prepared: bool) -> None:
    if not folder.is_dir():
        raise HermesError(f"{where}: folder not found: {folder}; fix 'path' (relative to {root})")
    for sub in ("imagesTr", "labelsTr") if not prepared else ():
        if not (folder / sub).is_dir():
            raise HermesError(f"{where}: {folder} has no {sub}/ folder; expected the nnU-Net/MSD layout "
                              "(imagesTr/, labelsTr/)")


def _parse_labels(labels_raw: Any, where: str) -> dict[int, tuple[str, ...]]:
    """{label value: target keys} from the config's ``labels`` mapping."""
    if not isinstance(labels_raw, dict) or not labels_raw:
        raise HermesError(f"{where}: 'labels' must map label values to targets, e.g. {{1: liver, 2: spleen}}")
    labels: dict[int, tuple[str, ...]] = {}
    for value, targets in labels_raw.items():
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = -1
        if number < 1 or str(number) != str(value).strip():
            raise HermesError(f"{where}: label value {value!r} must be an integer >= 1 (0 is background)")
        keys = targets if isinstance(targets, list) else [targets]
        if not keys or not all(isinstance(k, str) for k in keys):
            raise HermesError(f"{where}: label {number} must name a target or a list of targets")
        labels[number] = tuple(dict.fromkeys(vocabulary.target(k).key for k in keys))
    return labels


def _triple(value: Any, key: str, name: str, kind: type) -> tuple:
    if isinstance(value, (int, float)):
        value = [value] * 3
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise HermesError(f"{name}: '{key}' must be one number or three (z, y, x)")
    try:
        return tuple(kind(v) for v in value)
    except (TypeError, ValueError):
        raise HermesError(f"{name}: '{key}' must hold numbers, got {value!r}") from None


def _check_values(c: TrainingConfig, name: str) -> None:
    if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", str(c.name)):
        raise HermesError(f"{name}: 'name' {c.name!r} must be lower case letters, digits, '.', '_' or '-' (it names "
                          "the model file)")
    if any(w < 16 or w % 16 for w in c.window):
        raise HermesError(f"{name}: 'window' sizes must be multiples of 16 (the network pools 4 times), got "
                          f"{list(c.window)}")
    if any(s <= 0 for s in c.spacing):
        raise HermesError(f"{name}: 'spacing' must be positive millimetres, got {list(c.spacing)}")
    _check_ranges(c, name)
    if c.max_queries and c.max_queries < max(len(d.targets) for d in c.datasets):
        raise HermesError(f"{name}: 'max_queries' must be at least the largest number of targets a dataset annotates")
    if not isinstance(c.query_consistency, (int, float)) or c.query_consistency < 0:
        raise HermesError(f"{name}: 'query_consistency' must be a number >= 0 (0 turns it off), got "
                          f"{c.query_consistency!r}")
    _check_choices(c, name)
    if c.query == "modality" and c.query_consistency:
        raise HermesError(f"{name}: 'query_consistency' needs queries that vary ('query: annotated_subset'); "
                          "with 'query: modality' set it to 0")
    if not isinstance(c.workers, int) or isinstance(c.workers, bool) or c.workers < 0:
        raise HermesError(f"{name}: 'workers' must be a whole number >= 0, got {c.workers!r}")
    if c.offer_min_dice is not None and not 0 <= c.offer_min_dice <= 1:
        raise HermesError(f"{name}: 'offer_min_dice' must be between 0 and 1")


def _check_choices(c: TrainingConfig, name: str) -> None:
    """The keys whose value is one of a few names."""
    for key, value, choices in (("query", c.query, QUERIES), ("weights_dtype", c.weights_dtype, tuple(WEIGHT_DTYPES))):
        if value not in choices:
            raise HermesError(f"{name}: '{key}' must be one of {', '.join(choices)}, got {value!r}")


def _check_ranges(c: TrainingConfig, name: str) -> None:
    """The numbers that must be positive, and the fractions that must lie in their interval."""
    positive = {"steps": c.steps, "batch_size": c.batch_size, "lr": c.lr, "checkpoint_every": c.checkpoint_every,
                "log_every": c.log_every, "medcontext_patch": c.medcontext_patch}
    for key, value in positive.items():
        if not isinstance(value, (int, float)) or value <= 0:
            raise HermesError(f"{name}: '{key}' must be a positive number, got {value!r}")
    fractions = {"val_fraction": (c.val_fraction, 0.0, 0.9), "ema_decay": (c.ema_decay, 0.0, 1.0),
                 "foreground_fraction": (c.foreground_fraction, 0.0, 1.0), "val_overlap": (c.val_overlap, 0.0, 0.95),
                 "medcontext_mask_ratio": (c.medcontext_mask_ratio, 0.0, 0.95),
                 "slab_fraction": (c.slab_fraction, 0.0, 1.0), "recall_weight": (c.recall_weight, 0.0, 10.0),
                 "recall_until": (c.recall_until, 0.0, 1.0)}
    for key, (value, lo, hi) in fractions.items():
        if not isinstance(value, (int, float)) or not lo <= value <= hi:
            raise HermesError(f"{name}: '{key}' must be between {lo} and {hi}, got {value!r}")
