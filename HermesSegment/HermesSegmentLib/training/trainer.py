"""The trainer behind ``hermes-segment train``: one model, many partially labelled datasets.

Per step: a batch from :class:`Sampler` (weighted datasets, foreground-oversampled crops, the
modality's whole query per crop, or a random subset of its annotated targets), the partial-label
loss (BCE + Dice on the queried annotated tasks only, + 0.01 x modality cross-entropy, + the optional MedContext
consistency, + the optional query consistency: the same crops asked a second random query,
shared tasks' logits compared by MSE), AdamW with linear warm-up and poly decay, an EMA of the weights (the exported
model), bf16 autocast on CUDA only. Checkpoints hold everything needed for an exact resume.
At the end rank 0 measures Dice per (dataset, target) on the held-out cases with the same
sliding-window inference users run, and exports the EMA weights as a model package.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import datetime
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from .. import models, vocabulary
from ..errors import HermesError
from ..evaluation.metrics import dice
from ..inference.device import autocast
from ..models.manifest import FORMAT, FORMAT_VERSION, modality_entries
from ..network import HermesConfig, HermesNetwork
from . import checkpoint, distributed
from .config import TrainingConfig
from .datasets import Case, load_cases, target_masks
from .growth import deepen, fine_tuned_architecture, widen
from .incremental import TaskPlan, extend_task_priors, modality_queries, plan_tasks
from .losses import modality_loss, partial_label_loss, query_consistency_loss
from .medcontext import consistency_loss, mask_patches
from .sampling import Batch, Sampler, batch_stream

_GRAD_CLIP = 12.0
# A time-limited run measures its pace over these steps (after a third of them, once warm) ...
_CALIBRATION_STEPS = 30
# ... and keeps this many seconds for validation and export at the end.
_EXPORT_RESERVE = 120.0
_LOG_COLUMNS = ["step", "lr", "loss", "segmentation", "modality", "consistency", "query_consistency", "seconds"]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then poly decay (power 0.9) to zero at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1 - (step - warmup) / max(1, total - warmup)) ** 0.9


class Trainer:
    """Builds everything from a config; :meth:`fit` trains, validates and exports.

    ``init``: a model package to fine-tune (new targets get new task priors, see
    :mod:`.incremental`); ``resume``: continue from ``<output>/checkpoint``; ``command``: the
    command line recorded in the exported manifest.
    """

    def __init__(self, config: TrainingConfig, *, init: str | Path | None = None, resume: bool = False,
                 command: str = "", context: distributed.DistContext | None = None,
                 show_progress: bool = True) -> None:
        self.context = context or distributed.DistContext()
        self.command = command
        self.show_progress = show_progress and self.context.is_main
        self.device = self.context.device
        self.checkpoint_dir = config.output / "checkpoint"
        saved = checkpoint.load(self.checkpoint_dir) if resume else None
        tensors, state = saved if saved else ({}, {})

        self.base_manifest = state.get("base_manifest") if saved else self._read_base(init)
        if self.base_manifest:
            # The package fixes the scale and window the network learned; the config cannot change
            # them. A modality keeps the package's normalisation unless the config names another.
            inherited = {m["key"]: m["normalization"] for m in self.base_manifest["modalities"]}
            config = dataclasses.replace(
                config, spacing=tuple(self.base_manifest["input"]["spacing_zyx_mm"]),
                window=tuple(self.base_manifest["input"]["window_size_zyx"]),
                normalization={**inherited, **config.normalization})
        self.config = config
        self.plan = plan_tasks(config, self.base_manifest)
        arch = (fine_tuned_architecture(HermesConfig.from_manifest(self.base_manifest["architecture"]),
                                        config.network, config.model_keys)
                if self.base_manifest else config.network)
        self.network_config = dataclasses.replace(arch, num_task_priors=self.plan.num_task_priors)

        torch.manual_seed(config.seed)
        network = HermesNetwork(self.network_config)
        if self.base_manifest and not saved and init is not None:
            network.load_state_dict(self._init_weights(init, network))
        # channels-last 3D is 2-4x faster for conv backward on CPU (measured, oneDNN); values are the same.
        self.memory_format = torch.channels_last_3d if self.device.type == "cpu" else torch.contiguous_format
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # every batch has the window's shape: tune the convolutions once
        # The EMA copy stays in the default layout: it is what inference and the export see.
        self.ema = copy.deepcopy(network).to(self.device).eval().requires_grad_(False)
        # (torch's type stubs lack Module.to's documented memory_format argument)
        self.network = network.to(self.device, memory_format=self.memory_format)  # type: ignore[call-overload]
        self.model = distributed.wrap(self.network, self.context)
        self.optimizer = torch.optim.AdamW(self.network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        # Reads self.config: a time-limited run fixes its number of steps after a few (see fit).
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.config.warmup_steps, self.config.steps))
        self.step = 0
        # A time-limited run fits its steps to the limit, at most these (see _fit_to_time_limit).
        self._requested_steps = config.steps
        self._refit_every = _CALIBRATION_STEPS
        self.train_cases: list[Case] | None = None
        self.sampler: Sampler | None = None
        self.batches: Iterator[Batch] | None = None  # from worker processes, when config.workers > 0
        self._pending_sampler_state: dict[str, Any] | None = None
        if saved:
            self._restore(tensors, state)

    # ------------------------------------------------------------------ setup
    @staticmethod
    def _read_base(init: str | Path | None) -> dict[str, Any] | None:
        return models.read_manifest(models.resolve(init)) if init else None

    def _init_weights(self, init: str | Path, network: HermesNetwork) -> dict[str, torch.Tensor]:
        """The package's weights, widened and deepened as the config asks (:mod:`.growth`), task priors grown
        for the config's new targets."""
        assert self.base_manifest is not None  # read from ``init``
        loaded = models.load(init)
        old_rows = self.base_manifest["architecture"]["num_task_priors"]
        fresh, weights = network.state_dict(), loaded.network.state_dict()
        factor = self.network_config.base_channels // loaded.network.config.base_channels
        if factor > 1:
            weights = widen(weights, fresh, loaded.network.config, factor, seed=self.config.seed)
        return deepen(extend_task_priors(weights, fresh, old_rows), fresh)

    def _normalizations(self) -> dict[str, Any]:
        """{modality: normalisation} of the model being trained (the base model's when fine-tuning)."""
        return {e["key"]: e["normalization"] for e in manifest_modalities(self.config, self.base_manifest)}

    def prepare_data(self, progress: Callable[[str], None] | None = None) -> None:
        """Preprocess (or load from the cache) the training cases and build this rank's sampler."""
        if self.sampler is not None:
            return
        self.train_cases = load_cases(self.config, "train", progress, normalizations=self._normalizations())
        self.sampler = Sampler(self.config, self.train_cases, self.plan.per_dataset, rank=self.context.rank)
        if self._pending_sampler_state is not None:
            self.sampler.load_state_dict(self._pending_sampler_state)
        if self.config.workers:
            self.batches = batch_stream(self.config, self.train_cases, self.plan.per_dataset, rank=self.context.rank,
                                        first_step=self.step, pin_memory=self.device.type == "cuda")

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict[str, float]:
        """One optimisation step; returns the loss terms (floats) of this rank's batch."""
        self.prepare_data()
        self.network.train()
        assert self.sampler is not None  # prepare_data made it (also with workers: its stream serves the queries)
        batch = next(self.batches) if self.batches is not None else self.sampler.batch()
        image = batch.image.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)
        masks, valid = batch.masks.to(self.device, non_blocking=True), batch.valid.to(self.device)
        queries, modality = batch.queries.to(self.device), batch.modality.to(self.device)
        consistency = torch.zeros((), device=self.device)
        teacher_logits = None
        if self.config.medcontext:
            with torch.no_grad(), self._autocast():
                teacher_logits, _ = self.ema(image, queries, modality)
            image = mask_patches(image, self.sampler.rng, self.config.medcontext_mask_ratio,
                                 self.config.medcontext_patch)
        query_term = torch.zeros((), device=self.device)
        match = None
        if self.config.query_consistency > 0:
            # The same crops asked a second, different query, in the same forward pass (one DDP
            # forward per backward): the shared tasks' logits must agree.
            second, match = self.sampler.alternative_queries(batch.queries, batch.dataset)
            image = torch.cat([image, image])
            queries, modality = torch.cat([queries, second.to(self.device)]), torch.cat([modality, modality])
        with self._autocast():
            logits, modality_logits = self.model(image, queries, modality)
        if match is not None:
            logits, other_logits = logits.chunk(2)
            modality_logits, modality = modality_logits[:len(logits)], modality[:len(logits)]
            query_term = query_consistency_loss(logits, other_logits, match.to(self.device))
        segmentation = partial_label_loss(logits, masks, valid, self.config.recall_weight_at(self.step))
        mod = modality_loss(modality_logits, modality)
        if teacher_logits is not None:
            consistency = consistency_loss(logits, teacher_logits, valid)
        loss = (segmentation + mod + self.config.medcontext_weight * consistency
                + self.config.query_consistency * query_term)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), _GRAD_CLIP)
        self.optimizer.step()
        self.scheduler.step()
        self._update_ema()
        self.step += 1
        return {"loss": loss.item(), "segmentation": segmentation.item(), "modality": mod.item(),
                "consistency": consistency.item(), "query_consistency": query_term.item()}

    def _autocast(self):
        # bf16 on CUDA only: on the CPU, bf16 autocast made a training step slower (1.7 s vs 1.1-1.4 s).
        return autocast(self.device, torch.bfloat16 if self.device.type == "cuda" else None)

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Short warm-up of the decay so that early EMA weights are not dominated by the random init.
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        for ema, live in zip(self.ema.parameters(), self.network.parameters()):
            ema.lerp_(live.detach(), 1 - decay)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        """All ranks must call this (sampler streams are gathered); rank 0 writes."""
        sampler_state = self.sampler.state_dict() if self.sampler else self._pending_sampler_state
        streams = [sampler_state]
        if self.context.distributed:
            streams = [None] * self.context.world_size
            torch.distributed.all_gather_object(streams, sampler_state)
        if not self.context.is_main:
            return
        optim_tensors, optim_rest = checkpoint.optimizer_to_flat(self.optimizer.state_dict())
        tensors = {**{f"model.{k}": v for k, v in self.network.state_dict().items()},
                   **{f"ema.{k}": v for k, v in self.ema.state_dict().items()},
                   **optim_tensors, "rng.torch": torch.get_rng_state()}
        state = {"step": self.step, "optimizer": optim_rest, "scheduler": self.scheduler.state_dict(),
                 "samplers": streams, "base_manifest": self.base_manifest,
                 "network": self.network_config.to_manifest(), "world_size": self.context.world_size}
        checkpoint.save(self.checkpoint_dir, tensors, state)

    def _restore(self, tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any]) -> None:
        if state["network"] != self.network_config.to_manifest():
            raise HermesError(f"the checkpoint in {self.checkpoint_dir} is for another network or target list; "
                              "use a new --out folder or the original config")
        if state["world_size"] != self.context.world_size:
            raise HermesError(f"the checkpoint was written by {state['world_size']} processes, this run has "
                              f"{self.context.world_size}; resume with the same number of processes")
        self.network.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        self.ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
        self.optimizer.load_state_dict(checkpoint.optimizer_from_flat(tensors, state["optimizer"]))
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        self.step = int(state["step"])
        self._pending_sampler_state = state["samplers"][self.context.rank]

    # ------------------------------------------------------------------ the run
    def fit(self, time_limit: float | None = None, stop_after: int | None = None) -> Path | None:
        """Train to ``config.steps``, validate, export; returns the package path on rank 0.

        ``time_limit`` (seconds, from now): after ``_CALIBRATION_STEPS`` steps the run measures its
        pace and lowers ``steps`` so that training ends about ``_EXPORT_RESERVE`` seconds before the
        limit, leaving that for validation and export, and measures it again every tenth of the run
        (never above the config's ``steps``); the learning-rate schedule follows the new count
        (printed, and needed as ``--steps`` to resume such a run). ``stop_after``: pause at
        that step (checkpoint written, nothing exported; returns None): ``--resume`` continues the
        same schedule, possibly with a changed config (the demo model's stage B did)."""
        if self.context.is_main:
            self.config.output.mkdir(parents=True, exist_ok=True)
        self._train(time_limit, stop_after)
        self.close()
        if self.step < self.config.steps:  # paused by stop_after
            self.save_checkpoint()
            return None
        path = None
        if self.context.is_main:
            metrics = self.validate()
            (self.config.output / "validation.json").write_text(json.dumps(metrics, indent=2) + "\n",
                                                                encoding="utf-8")
            path = self.export(metrics)
        distributed.barrier(self.context)
        return path

    def close(self) -> None:
        """Stops the batch-making worker processes, if any (:meth:`fit` does when training ends).

        Released here, at a known point: the trainer is in a reference cycle (its schedule reads
        its config), so otherwise the workers would live until some later garbage collection and
        be torn down in the middle of whatever runs then."""
        self.batches = None  # the DataLoader iterator shuts its workers down when released

    def _train(self, time_limit: float | None, stop_after: int | None) -> None:
        """The training loop of :meth:`fit`: steps, log, progress bar, checkpoints."""
        started = time.time()
        self.prepare_data(self._case_progress("preprocessing"))
        log = _Log(self.config.output, self.step) if self.context.is_main else None
        bar = self._bar(total=self.config.steps, initial=self.step, desc="train")
        first_step, pace_from = self.step, None
        while self.step < min(self.config.steps, stop_after or self.config.steps):
            terms = self.train_step()
            if time_limit is not None:
                pace_from = self._fit_to_time_limit(time_limit, started, first_step, pace_from, bar)
            cfg = self.config
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{terms['loss']:.3f}")
            if log is not None and (self.step % cfg.log_every == 0 or self.step == cfg.steps):
                log.write(self.step, self.scheduler.get_last_lr()[0], terms, time.time() - started)
            if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()

    def _fit_to_time_limit(self, limit: float, started: float, first_step: int, pace_from: tuple[int, float] | None,
                           bar) -> tuple[int, float] | None:
        """Measure the pace once warm (the first steps compile kernels and fill the workers' queues),
        then fix ``steps`` to fit the time limit; measure it again every tenth of the run and fit
        again, since the first steps' pace can be far from the rest's (a CPU stage planned 6635 steps
        from its first 20 and then ran 40 % slower: another process had started). Returns where the
        pace is measured from."""
        now = time.time()
        done = self.step - first_step
        if done == _CALIBRATION_STEPS // 3:
            return self.step, now
        if pace_from is None or done < _CALIBRATION_STEPS:
            return pace_from
        since = self.step - pace_from[0]
        first = done == _CALIBRATION_STEPS
        if not first and since < self._refit_every:
            return pace_from
        seconds_per_step = (now - pace_from[1]) / since
        fit = self.step + int(max(0.0, limit - _EXPORT_RESERVE - (now - started)) / seconds_per_step)
        steps = distributed.broadcast_int(min(self._requested_steps, max(fit, self.step + 1)), self.context)
        if first:
            self._refit_every = max(_CALIBRATION_STEPS, (steps - self.step) // 10)
        if (first or steps != self.config.steps) and self.context.is_main:
            (bar.write if bar is not None else print)(
                f"time limit {limit:.0f} s: {seconds_per_step:.3f} s per step, training to step {steps} "
                f"(resume with --steps {steps})")
        self.config = dataclasses.replace(self.config, steps=steps)
        if bar is not None:
            bar.total = steps
        return self.step, now

    # ------------------------------------------------------------------ validation
    def validate(self, network: torch.nn.Module | None = None) -> dict[str, Any]:
        """Dice per (dataset, target) and per (modality, target) on the held-out cases.

        Each case is segmented with all the targets it annotates in one query (with ``query:
        modality``: the modality's query, as the engine asks it) by the sliding-window inference
        (``inference.predict_volume``), thresholded at 0.5, compared in model space.
        """
        cases = load_cases(self.config, "val", self._case_progress("validation data"),
                           normalizations=self._normalizations())
        network = network or self.ema
        queries = modality_queries(self.config, self.plan.per_dataset) if self.config.query == "modality" else {}
        by_dataset: dict[str, dict[str, list[float]]] = {}
        bar = self._bar(total=len(cases), desc="validate")
        for case in cases:
            spec = self.config.datasets[case.dataset_index]
            scores = case_dice(network, case, spec, self.plan.per_dataset[case.dataset_index],
                               self.config.window, self.config.val_overlap, self.device, list(case.annotated),
                               query=queries.get(spec.modality))
            for target, value in scores.items():
                by_dataset.setdefault(spec.name, {}).setdefault(target, []).append(value)
            if bar is not None:
                bar.update(1)
        if bar is not None:
            bar.close()
        modality_of = {d.name: d.modality for d in self.config.datasets}
        by_modality: dict[str, dict[str, list[float]]] = {}
        for dataset, targets in by_dataset.items():
            for target, values in targets.items():
                by_modality.setdefault(modality_of[dataset], {}).setdefault(target, []).extend(values)
        mean = lambda values: round(float(np.mean(values)), 4)  # noqa: E731 - local shorthand
        return {
            "validation_dice": {m: {t: mean(v) for t, v in ts.items()} for m, ts in by_modality.items()},
            "validation_dice_by_dataset": {d: {t: mean(v) for t, v in ts.items()} for d, ts in by_dataset.items()},
            "validation_cases": {d.name: sum(1 for c in cases if c.dataset_index == i)
                                 for i, d in enumerate(self.config.datasets)},
        }

    # ------------------------------------------------------------------ export
    def export(self, metrics: Mapping[str, Any]) -> Path:
        """Write ``<output>/<name>.safetensors`` (EMA weights) with its manifest filled in."""
        per_dataset = Counter(self.config.datasets[c.dataset_index].name for c in self.train_cases or [])
        manifest = build_manifest(self.config, self.plan, self.network_config, self.base_manifest, metrics,
                                  command=self.command, steps=self.step, train_cases=per_dataset)
        path = self.config.output / f"{self.config.name}.safetensors"
        models.save(path, self.ema.state_dict(), manifest, dtype=self.config.weights_dtype)
        return path

    # ------------------------------------------------------------------ progress helpers
    def _bar(self, **kwargs):
        if not self.show_progress:
            return None
        from tqdm import tqdm

        return tqdm(unit="step" if kwargs.get("desc") == "train" else "case", dynamic_ncols=True, **kwargs)

    def _case_progress(self, what: str) -> Callable[[str], None] | None:
        if not self.show_progress:
            return None
        return lambda message: print(f"{what}: {message}", flush=True)


def case_dice(network: torch.nn.Module, case: Case, spec, tasks: Mapping[str, int], window, overlap: float,
              device: torch.device, targets: list[str] | None = None,
              query: Sequence[int] | None = None) -> dict[str, float]:
    """Dice of each of ``targets`` (default: all the dataset annotates) on one preprocessed case,
    all asked in one query (``query``: these task indices, the targets' among them; default: the
    targets' own), in float32 (so that the recorded Dice does not depend on the machine's CPU).
    Empty truth and empty prediction count as 1."""
    from ..inference import predict_volume
    from ..network import HermesPredictor

    targets = list(targets or spec.targets)
    indices = [tasks[t] for t in targets]
    query = list(query) if query is not None else indices
    predictor = HermesPredictor(network, query, vocabulary.modality(spec.modality).slot, precision="float32",
                                outputs=[query.index(i) for i in indices])
    probabilities = predict_volume(predictor, np.array(case.image, np.float32), window_zyx=window, overlap=overlap,
                                   device=device)
    truth = target_masks(np.asarray(case.label), spec, targets).astype(bool)
    return {t: dice(probabilities[i] >= 128, truth[i]) for i, t in enumerate(targets)}



def manifest_modalities(config: TrainingConfig, base: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The manifest's modality entries: the base model's (slot and normalisation) when fine-tuning,
    then the defaults for modalities new to it; a normalisation the config names wins. Training
    normalises its data as these say."""
    keys = list(dict.fromkeys([m["key"] for m in (base or {}).get("modalities", [])]
                              + [d.modality for d in config.datasets]))
    base_modalities = {m["key"]: m for m in (base or {}).get("modalities", [])}
    entries = [dict(base_modalities.get(e["key"], e)) for e in modality_entries(keys)]
    for entry in entries:
        if entry["key"] in config.normalization:
            entry["normalization"] = dict(config.normalization[entry["key"]])
    return entries


def build_manifest(config: TrainingConfig, plan: TaskPlan, network_config: HermesConfig,
                   base: Mapping[str, Any] | None, metrics: Mapping[str, Any], *, command: str, steps: int,
                   train_cases: Mapping[str, int]) -> dict[str, Any]:
    """The exported package's manifest: tasks from the plan, defaults for the (modality, target)
    pairs trained here (only those reaching ``offer_min_dice`` when set), provenance with the
    command, seed, steps, data (``train_cases``: training cases per dataset name; each dataset's
    origin, source and targets under ``provenance.datasets``) and measured Dice. Datasets the base
    package learned from and this run did not retrain stay listed."""
    measured = metrics.get("validation_dice", {})
    defaults = {m: dict(t) for m, t in (base or {}).get("defaults", {}).items()}
    for spec, tasks in zip(config.datasets, plan.per_dataset):
        for target, index in tasks.items():
            score = measured.get(spec.modality, {}).get(target)
            if config.offer_min_dice is None or (score is not None and score >= config.offer_min_dice):
                defaults.setdefault(spec.modality, {})[target] = index
            else:  # measured here and found wanting: no longer offered, even if the base model offered it
                defaults.get(spec.modality, {}).pop(target, None)
    modalities = manifest_modalities(config, base)
    data = "; ".join(f"{d.name} ({d.modality}, {', '.join(d.targets)})" for d in config.datasets)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "name": config.name, "title": config.title, "version": config.version,
        "description": config.description or f"Hermes network trained with hermes-segment train on: {data}",
        "license": config.license, "intended_use": config.intended_use, "demo": bool(config.demo),
        "architecture": network_config.to_manifest(),
        "input": {"window_size_zyx": list(config.window), "spacing_zyx_mm": list(config.spacing), "orientation": "LPS"},
        "modalities": modalities,
        "tasks": plan.tasks,
        "defaults": {m: t for m, t in defaults.items() if t},
        **({"queries": _queries(config, plan, base, defaults)} if config.query == "modality" else {}),
        "provenance": {
            "source": "hermes-segment train" + (f" (fine-tuned from {base['name']})" if base else ""),
            "training_command": command,
            "seed": config.seed,
            "steps": steps,
            "data": f"{sum(train_cases.values())} training cases from: {data}",
            "datasets": _dataset_provenance(config, train_cases, base),
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "metrics": {**metrics, "offer_min_dice": config.offer_min_dice,
                        "evaluation": "Dice in model space on held-out cases, "
                                      + ("the modality's query" if config.query == "modality"
                                         else "all of a case's annotated targets in one query")
                                      + f", sliding window (overlap {config.val_overlap:.2f}), threshold 0.5"},
            **({"fine_tuned_from": {"name": base["name"], "provenance": base["provenance"]}} if base else {}),
        },
    }


def _queries(config: TrainingConfig, plan: TaskPlan, base: Mapping[str, Any] | None,
             defaults: Mapping[str, Mapping[str, int]]) -> dict[str, list[int]]:
    """The manifest's ``queries``: the modality queries trained here (with any task still offered
    there that this run did not train, so that the engine can ask it), the base package's for the
    modalities this run did not train."""
    queries = {m: list(q) for m, q in (base or {}).get("queries", {}).items()}
    for modality, query in modality_queries(config, plan.per_dataset).items():
        queries[modality] = sorted(set(query) | set(defaults.get(modality, {}).values()))
    return queries


def _dataset_provenance(config: TrainingConfig, train_cases: Mapping[str, int],
                        base: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """One entry per dataset the model learned from: this run's, then the base package's others."""
    entries = [{"name": d.name, "modality": d.modality, "origin": d.origin or "unknown", "source": d.source,
                "targets": list(d.targets), "training_cases": int(train_cases.get(d.name, 0))}
               for d in config.datasets]
    names = {d.name for d in config.datasets}
    for entry in ((base or {}).get("provenance") or {}).get("datasets", []):
        if entry.get("name") not in names:
            entries.append(dict(entry))
    return entries


class _Log:
    """CSV log (``train_log.csv``, appended on resume) and TensorBoard when it is installed."""

    def __init__(self, output: Path, step: int) -> None:
        path = output / "train_log.csv"
        fresh = step == 0 or not path.is_file()
        self.file = open(path, "w" if fresh else "a", newline="", encoding="utf-8")
        self.csv = csv.writer(self.file)
        if fresh:
            self.csv.writerow(_LOG_COLUMNS)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # TensorBoard is optional
            self.tensorboard = None
        else:
            self.tensorboard = SummaryWriter(str(output / "tensorboard"))

    def write(self, step: int, lr: float | torch.Tensor, terms: Mapping[str, float], seconds: float) -> None:
        row = [step, f"{float(lr):.6g}"] + [f"{terms[k]:.6f}" for k in _LOG_COLUMNS[2:-1]] + [f"{seconds:.1f}"]
        self.csv.writerow(row)
        self.file.flush()
        if self.tensorboard is not None:
            for key in _LOG_COLUMNS[2:-1]:
                self.tensorboard.add_scalar(f"train/{key}", terms[key], step)
            self.tensorboard.add_scalar("train/lr", lr, step)

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()
