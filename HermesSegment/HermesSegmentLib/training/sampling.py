"""Training batches: weighted dataset choice, random crops with foreground oversampling, the
modality query (or random subsets of the case's annotated targets) as queries, MONAI augmentations.

Every random choice comes from two generators owned by the sampler (a numpy ``Generator`` for
the sampling, one ``RandomState`` shared by all MONAI transforms), so its whole state is two
JSON-able objects: a checkpoint stores them and a resumed run draws exactly the same batches.
Under DDP each rank seeds its own stream from (seed, rank).

With ``workers: N`` (a GPU consumes batches faster than one process makes them) N worker
processes each run their own sampler, seeded from (seed, rank, worker, first step), and the
training process takes their batches as they come (:func:`batch_stream`). A run resumed with
workers draws batches as deterministic as their arrival order allows, not the ones an
uninterrupted run would have drawn.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .. import vocabulary
from .config import TrainingConfig
from .datasets import Case, target_masks
from .incremental import modality_queries

# Foreground voxel lists are thinned to at most this many per (case, target): enough variety.
_MAX_FOREGROUND = 20000


@dataclass
class Batch:
    """image (B, 1, D, H, W) float32; masks (B, T, D, H, W) float32 (0 for padded queries);
    queries (B, T) long task indices, -1 = padding (null token); valid (B, T) bool;
    modality (B, 1) long slots; dataset (B,) long dataset indices; cases: "dataset/case" per sample."""

    image: torch.Tensor
    masks: torch.Tensor
    queries: torch.Tensor
    valid: torch.Tensor
    modality: torch.Tensor
    dataset: torch.Tensor
    cases: tuple[str, ...] = ()

    def pin_memory(self) -> Batch:
        """Page-locked copies (the DataLoader calls this with pin_memory=True): faster, asynchronous
        copies to the GPU."""
        return dataclasses.replace(self, image=self.image.pin_memory(), masks=self.masks.pin_memory())


def build_augmentation(state: np.random.RandomState):
    """The MONAI augmentation chain (cheap: small rotations/scales, intensity, noise, blur, gamma).

    No flips: left and right organs are different targets. Every transform draws from ``state``.
    """
    from monai import transforms as T

    chain = T.Compose([
        T.RandAffined(keys=["image", "label"], prob=0.3, rotate_range=(0.1, 0.1, 0.26), scale_range=(0.12, 0.12, 0.12),
                      mode=("bilinear", "nearest"), padding_mode="border"),
        T.RandScaleIntensityd(keys="image", factors=0.15, prob=0.3),
        T.RandShiftIntensityd(keys="image", offsets=0.15, prob=0.3),
        T.RandGaussianNoised(keys="image", prob=0.15, std=0.1),
        T.RandGaussianSmoothd(keys="image", prob=0.15, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
        T.RandAdjustContrastd(keys="image", prob=0.15, gamma=(0.7, 1.5)),
    ])
    for transform in chain.transforms:
        transform.set_random_state(state=state)
    return chain


class Sampler:
    """Draws training batches from preprocessed cases (see the module docstring)."""

    def __init__(self, config: TrainingConfig, cases: Sequence[Case], task_of: Sequence[dict[str, int]],
                 rank: int = 0, stream: Sequence[int] = ()) -> None:
        """``task_of[d][target]``: the task index serving ``target`` for dataset ``d``; ``stream``:
        extra seed words (a worker's index and first step) for a sampler of its own."""
        self.config = config
        self.task_of = task_of
        self.slots = [vocabulary.modality(d.modality).slot for d in config.datasets]
        self.queries = config.queries_per_sample
        queries = modality_queries(config, task_of)
        self.query_of = [queries[d.modality] for d in config.datasets]
        self.by_dataset = [[c for c in cases if c.dataset_index == i] for i in range(len(config.datasets))]
        usable = [i for i, group in enumerate(self.by_dataset) if group]
        weights = np.array([config.datasets[i].weight for i in usable], float)
        self.usable, self.weights = usable, weights / weights.sum()
        # The datasets a crop of one modality is drawn from (the rest of a batch, with query: modality).
        self.usable_of: dict[str, tuple[list[int], np.ndarray]] = {}
        for modality in {config.datasets[i].modality for i in usable}:
            same = [k for k, i in enumerate(usable) if config.datasets[i].modality == modality]
            self.usable_of[modality] = [usable[k] for k in same], self.weights[same] / self.weights[same].sum()
        self.rng = np.random.default_rng([config.seed, 1, rank, *stream])
        aug_seed = np.random.SeedSequence([config.seed, 2, rank, *stream]).generate_state(1)[0]
        self.aug_state = np.random.RandomState(aug_seed)
        self.augment = build_augmentation(self.aug_state) if config.augment else None
        self._foreground: dict[tuple[int, str], np.ndarray] = {}

    # -- state (for exact resume)
    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, cached = self.aug_state.get_state(legacy=True)
        return {"rng": self.rng.bit_generator.state, "aug": [name, np.asarray(keys).tolist(), pos, has_gauss, cached]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]
        name, keys, pos, has_gauss, cached = state["aug"]
        self.aug_state.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, cached))

    # -- sampling
    def batch(self) -> Batch:
        """``batch_size`` crops. With ``query: modality`` they share one modality (drawn by the
        datasets' weights), so that every crop asks that modality's whole query with no padding:
        null tokens the engine never queries would change what the voxels attend to."""
        samples, cases = [], []
        same_modality = None
        for _ in range(self.config.batch_size):
            *tensors, case = self.sample(same_modality)
            if self.config.query == "modality":
                same_modality = self.config.datasets[case.dataset_index].modality
            samples.append(tensors)
            cases.append(f"{case.files.dataset}/{case.files.case}")
        image, masks, queries, valid, modality, dataset = (torch.stack([s[i] for s in samples]) for i in range(6))
        return Batch(image, masks, queries, valid, modality, dataset, cases=tuple(cases))

    def sample(self, modality: str | None = None) -> tuple[Any, ...]:
        """One crop (from a dataset of ``modality`` when given): (image (1, *W), masks (T, *W),
        queries (T,), valid (T,), modality (1,), dataset (), the Case it was cut from)."""
        usable, weights = (self.usable, self.weights) if modality is None else self.usable_of[modality]
        dataset = usable[self.rng.choice(len(usable), p=weights)]
        spec = self.config.datasets[dataset]
        group = self.by_dataset[dataset]
        case = group[self.rng.integers(len(group))]
        annotated = case.annotated
        if self.config.query == "modality":
            chosen = list(annotated)
        else:
            # A random non-empty subset of the targets annotated in this case, in random order: a
            # task's prediction must not depend on which other tasks are asked with it, and a target
            # the case does not annotate is unknown there (asking for it would teach "background").
            count = int(self.rng.integers(1, len(annotated) + 1))
            chosen = [annotated[i] for i in self.rng.permutation(len(annotated))[:count]]
        centre = None
        if self.rng.random() < self.config.foreground_fraction:
            centre = self._foreground_voxel(case, chosen[int(self.rng.integers(len(chosen)))])
        image, label, start = self._crop(case, centre)
        if self.config.slab_fraction and self.rng.random() < self.config.slab_fraction:
            keep = None if centre is None else centre - start  # the drawn foreground voxel stays in the slab
            image, label = self._as_slab(image, label, float(np.min(case.image)), keep,
                                         self.config.normalization_for(spec.modality))
        masks = target_masks(label, spec, chosen)
        image_t, masks_t = torch.from_numpy(image)[None], torch.from_numpy(masks)
        if self.augment is not None:
            out = self.augment({"image": image_t, "label": masks_t})
            image_t, masks_t = _plain(out["image"]), _plain(out["label"])
        slot = torch.tensor([self.slots[dataset]])
        if self.config.query == "modality":
            # The modality's whole query; a task this case does not annotate is asked without loss.
            query = self.query_of[dataset]
            padded = torch.zeros((len(query), *self.config.window), dtype=torch.float32)
            position = [query.index(self.task_of[dataset][t]) for t in chosen]
            padded[position] = masks_t.float()
            valid = torch.zeros(len(query), dtype=torch.bool)
            valid[position] = True
            return (image_t.float().contiguous(), padded, torch.tensor(query), valid, slot, torch.tensor(dataset),
                    case)
        padded = torch.zeros((self.queries, *self.config.window), dtype=torch.float32)
        padded[:len(chosen)] = masks_t.float()
        queries = torch.full((self.queries,), -1, dtype=torch.long)
        queries[:len(chosen)] = torch.tensor([self.task_of[dataset][t] for t in chosen])
        return image_t.float().contiguous(), padded, queries, queries >= 0, slot, torch.tensor(dataset), case

    def alternative_queries(self, queries: torch.Tensor, dataset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A second random query per sample, over the same annotated targets and sharing at least
        one task with the first (for the query-consistency term).

        Returns (queries2 (B, T) long, -1 = padding; match (B, T) long: for each slot of the first
        query, the slot of the same task in queries2, -1 where it is not asked there).
        """
        second = torch.full_like(queries, -1)
        match = torch.full_like(queries, -1)
        for i, (asked, d) in enumerate(zip(queries.tolist(), dataset.tolist())):
            asked = [q for q in asked if q >= 0]
            keep = asked[int(self.rng.integers(len(asked)))]
            chosen = [keep] + [t for t in self.task_of[d].values() if t != keep and self.rng.random() < 0.5]
            chosen = [chosen[j] for j in self.rng.permutation(len(chosen))]
            second[i, :len(chosen)] = torch.tensor(chosen)
            for slot, task in enumerate(queries[i].tolist()):
                if task >= 0 and task in chosen:
                    match[i, slot] = chosen.index(task)
        return second, match

    def _foreground_voxel(self, case: Case, target: str) -> np.ndarray | None:
        """A random voxel (z, y, x) of ``target`` in ``case``, or None when the case has none."""
        key = (id(case), target)
        if key not in self._foreground:
            spec = self.config.datasets[case.dataset_index]
            values = [v for v, keys in spec.labels.items() if target in keys]
            flat = np.flatnonzero(np.isin(np.asarray(case.label), values))
            step = max(1, flat.size // _MAX_FOREGROUND)
            self._foreground[key] = flat[::step].astype(np.int64)
        voxels = self._foreground[key]
        if voxels.size == 0:
            return None
        return np.array(np.unravel_index(voxels[self.rng.integers(voxels.size)], case.label.shape))

    def _as_slab(self, image: np.ndarray, label: np.ndarray, air: float, keep: np.ndarray | None,
                 normalization: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The crop as the sliding window sees a partial scan: only a random slab of it holds the
        image, the rest is filled as the engine pads a scan shorter than its window (the volume's
        minimum, air) and labelled background. A scan that covers part of the body must not
        change what is found inside it (a network never shown a cut-off body took a 90 mm slab of
        a CT for something else: Dice 0.18 for the liver it found at 0.90 in the whole scan).

        With a per-volume ``normalization`` (statistics of the scan), the slab is normalised again
        with its own statistics, as the engine normalises a scan that is only this slab: a PET
        slab through the bladder is scaled very differently from the whole body."""
        window = np.array(image.shape)
        axis, start, stop = _slab_window(window, self.rng, keep)
        inside = [slice(None)] * 3
        inside[axis] = slice(start, stop)
        slab = renormalized(image[tuple(inside)], normalization) if normalization else image[tuple(inside)]
        out = np.full(image.shape, air if not normalization else float(np.min(slab)), np.float32)
        out[tuple(inside)] = slab
        cut = np.zeros(label.shape, label.dtype)
        cut[tuple(inside)] = label[tuple(inside)]
        return out, cut

    def _crop(self, case: Case, centre: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A window-sized (image, label) crop, padded with the volume's minimum (air) and label 0
        wherever it leaves the volume, and the crop's start in the case (z, y, x).

        Random crops may start up to a third of a window outside the cached body crop, and crops
        around a foreground ``centre`` are shifted by up to a third of a window: the network must
        see windows that are partly outside air and targets away from the window's centre, as the
        sliding window shows it on whole fields of view (a model trained only on in-body crops
        centred on its targets labelled the air around a torso as lung).
        """
        shape, window = np.array(case.image.shape), np.array(self.config.window)
        reach = window // 3
        if centre is None:
            low, high = np.minimum(shape - window, 0) - reach, np.maximum(shape - window, 0) + reach
            start = np.array([self.rng.integers(a, b + 1) for a, b in zip(low, high)])
        else:
            jitter = np.array([self.rng.integers(-r, r + 1) for r in reach])
            start = centre - window // 2 + jitter
        start = np.clip(start, 1 - window, shape - 1)  # never a window of pure padding
        inside_start, inside_stop = np.clip(start, 0, shape), np.clip(start + window, 0, shape)
        box = tuple(slice(a, b) for a, b in zip(inside_start, inside_stop))
        image, label = np.array(case.image[box], np.float32), np.array(case.label[box])  # copies off the memory map
        pad = [(int(a - s), int(s + w - b)) for s, a, b, w in zip(start, inside_start, inside_stop, window)]
        if any(before or after for before, after in pad):
            image = np.pad(image, pad, constant_values=float(np.min(case.image)))
            label = np.pad(label, pad)
        return image, label, start


class _BatchStream(torch.utils.data.IterableDataset):
    """Endless batches from one Sampler per worker process (see the module docstring)."""

    def __init__(self, config: TrainingConfig, cases: Sequence[Case], task_of: Sequence[dict[str, int]],
                 rank: int, first_step: int) -> None:
        self.args = (config, cases, task_of, rank)
        self.first_step = first_step

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        torch.set_num_threads(1)  # one core per worker: N workers use N cores
        sampler = Sampler(*self.args, stream=(info.id if info else 0, self.first_step))
        while True:
            yield sampler.batch()


def batch_stream(config: TrainingConfig, cases: Sequence[Case], task_of: Sequence[dict[str, int]], *,
                 rank: int = 0, first_step: int = 0, pin_memory: bool = False) -> Iterator[Batch]:
    """Batches made by ``config.workers`` worker processes (forked: the cases' arrays are shared,
    not copied), a few per worker made ahead."""
    loader = torch.utils.data.DataLoader(_BatchStream(config, cases, task_of, rank, first_step), batch_size=None,
                                         num_workers=config.workers, persistent_workers=True, prefetch_factor=4,
                                         pin_memory=pin_memory)
    return iter(loader)


# The engine's normalisations whose statistics come from the volume (their ``per_volume``; named
# here because the engine's registry imports SimpleITK, which a training machine may lack; a test
# keeps the two in step).
PER_VOLUME_NORMALIZATIONS = ("clip_zscore", "percentile_clip_zscore")


def renormalized(values: np.ndarray, normalization: dict) -> np.ndarray:
    """``values`` (already normalised as ``normalization`` says, over a whole scan) normalised
    again as if they were the whole scan: the per-volume statistics (percentiles, mean, standard
    deviation) of ``values`` themselves. Z-scoring commutes with affine maps, so this equals
    normalising the raw slab (up to intensities the first clip already cut); a method with fixed
    statistics returns ``values`` unchanged."""
    method = normalization.get("method")
    if method not in PER_VOLUME_NORMALIZATIONS:
        return values
    values = values.astype(np.float32, copy=True)
    if method == "percentile_clip_zscore":
        lo, hi = np.percentile(values, normalization["percentiles"])
        np.clip(values, lo, hi, out=values)
    std = float(values.std())
    values -= np.float32(values.mean())
    if std > 1e-6:
        values /= np.float32(std)
    return values


def _slab_window(window: np.ndarray, rng: np.random.Generator, keep: np.ndarray | None) -> tuple[int, int, int]:
    """(axis, start, stop) of a random slab inside a window: usually along z (a scan's length), a
    third of the time across (a small field of view); ``keep`` (a window index) stays inside."""
    axis = 0 if rng.random() < 2 / 3 else int(rng.integers(1, 3))
    size = int(window[axis])
    length = int(rng.integers(max(4, size // 6), size - size // 6 + 1))
    low, high = 0, size - length
    if keep is not None:
        low, high = max(low, int(keep[axis]) - length + 1), min(high, int(keep[axis]))
    start = int(rng.integers(low, max(low, high) + 1))
    return axis, start, start + length


def _plain(tensor: Any) -> torch.Tensor:
    """MONAI returns MetaTensors; the network and the loss want plain tensors."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else torch.as_tensor(tensor)
