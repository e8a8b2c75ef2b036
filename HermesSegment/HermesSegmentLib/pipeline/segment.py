"""segment_image(): the one function the CLI, the Slicer logic and the tests call.

image -> preprocess.to_model_space -> inference.predict_volume (network) -> per target:
postprocess.probabilities_to_mask -> postprocess.apply -> mask.TargetMask on the input grid.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence, Union

import numpy as np
import SimpleITK as sitk
import torch

from .. import notices, vocabulary
from ..errors import HermesError
from ..inference import (
    CancelToken,
    ProgressCallback,
    WindowPlan,
    available_memory_gb,
    choose_batch_size,
    compute_dtype,
    precision_name,
    predict_volume,
    report,
    select_device,
    window_memory_gb,
)
from ..mask import TargetMask
from ..memory import is_memory_error, out_of_memory
from ..models import LoadedModel, load
from ..models.manifest import task_terminology_entry
from ..models.package import sha256_file
from ..postprocess.components import apply as apply_postprocess
from ..postprocess.side import keep_to_side
from ..postprocess.to_input_grid import from_model_space, probabilities_to_mask, reference_geometry
from ..preprocess import ModelSpaceImage, to_hounsfield, to_model_space
from ..read import check_image
from .options import SegmentOptions

log = logging.getLogger(__name__)


@dataclass
class SegmentationResult:
    """Masks on the input grid, one per requested target, and what produced them.

    ``reference``: a UInt8 image with the input's geometry (see postprocess.reference_geometry).
    ``device`` and ``precision`` (float32, bfloat16 or float16): where and how the network ran to
    the end (after a GPU out-of-memory fallback: the CPU).
    ``seconds``: wall time per stage. ``windows``: ``windows`` run of ``lattice`` (a full run's).
    ``model_space`` and ``probabilities`` (uint8, one map per
    target in model space) are kept only when ``keep_probabilities`` was asked for.
    ``warnings``: what the user must know about this result, one line each (a conversion to
    Hounsfield units, a rule that could not run, an empty result explained), also logged.
    """

    masks: list[TargetMask]
    reference: sitk.Image
    modality: str
    model_name: str
    device: str
    precision: str = "float32"
    seconds: dict[str, float] = field(default_factory=dict)
    windows: dict[str, int] = field(default_factory=dict)
    model_space: Optional[ModelSpaceImage] = None
    probabilities: Optional[np.ndarray] = None
    warnings: list[str] = field(default_factory=list)

    def probability_maps(self) -> Iterator[tuple[str, np.ndarray]]:
        """(target key, uint8 probabilities on the input grid), one target at a time."""
        if self.probabilities is None or self.model_space is None:
            raise HermesError("probabilities were not kept; segment again with keep_probabilities=True")
        for mask, probabilities in zip(self.masks, self.probabilities):
            yield mask.key, from_model_space(probabilities, self.model_space, self.reference)


def _masks(probabilities: np.ndarray, keys: list[str], task_indices: list[int], loaded: LoadedModel,
           model_space: ModelSpaceImage, reference: sitk.Image, image: sitk.Image, options: SegmentOptions, *,
           progress: Optional[ProgressCallback], cancel: Optional[CancelToken]) -> list[TargetMask]:
    """Each target's probabilities as a mask on the input grid: side rule, threshold, cleanup."""
    cleanup = options.postprocess
    input_spacing_zyx = image.GetSpacing()[::-1]
    masks, unsided = [], []
    for number, (key, index) in enumerate(zip(keys, task_indices)):
        if cancel is not None:
            cancel.raise_if_cancelled()
        report(progress, "postprocess", number / len(keys), key)
        side = vocabulary.target(key).side
        if cleanup.side_constraint and side:
            if model_space.midline_x is None:
                unsided.append(key)
            else:
                keep_to_side(probabilities[number], side, model_space.midline_x, model_space.crop_offset_zyx[2],
                             model_space.spacing_zyx[2])
        crop = probabilities_to_mask(probabilities[number], model_space, reference, options.threshold)
        per_target = cleanup.for_target(key)
        array = apply_postprocess(crop.array, input_spacing_zyx, per_target) if per_target.active else crop.array
        task = loaded.task(index)
        masks.append(dataclasses.replace(crop, key=key, name=task["name"], color=tuple(task["color"]),
                                         terminology=task_terminology_entry(task), array=array))
    if unsided:
        log.warning("%s: the left/right side rule was skipped: the trunk reaches the edge of the field of view, so "
                    "the body's midline is unknown; check that each mask lies on its side (--no-side-constraint "
                    "silences this)", ", ".join(unsided))
    return masks


def _explain_empty(masks: Sequence[TargetMask], image: sitk.Image, window_zyx: Sequence[int],
                   spacing_zyx: Sequence[float]) -> None:
    """Warn when targets came out empty on an image far smaller than the model's window (its field
    of view): the model never saw anatomy in so little context, so "not found" means little."""
    empty = [m.key for m in masks if m.voxels == 0]
    extent = np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())  # x, y, z mm
    view = np.asarray(window_zyx[::-1], dtype=float) * np.asarray(spacing_zyx[::-1], dtype=float)
    if empty and np.any(extent < 0.5 * view):
        log.warning("%s: nothing found; the image covers only %s mm, far less than the model's %s mm field of view "
                    "(its window), so the model sees too little anatomy to recognise; segment a larger scan",
                    ", ".join(empty), " x ".join(f"{v:.0f}" for v in extent), " x ".join(f"{v:.0f}" for v in view))


def window_predictor(loaded: LoadedModel, modality: str, task_indices: Sequence[int], options: SegmentOptions,
                     device: torch.device) -> tuple[Any, int]:
    """(predictor, batch size): what a run of ``options`` calls on its windows of ``modality`` (a
    canonical key) for the task rows ``task_indices``, and how many windows it gives it at a time.

    The model's fixed query for the modality (:meth:`LoadedModel.query`: a target's mask does not
    depend on the other targets asked), the asked tasks' logits picked from it, run by the asked
    backend. The Slicer panel's per-window time (``slicer.estimate``) is measured on exactly this.
    """
    window = loaded.manifest["input"]["window_size_zyx"]
    query = loaded.query(modality)
    predictor = _backend(options, loaded, window, device,
                         loaded.predictor(query, loaded.modality_entry(modality)["slot"], precision=options.precision,
                                          outputs=[query.index(index) for index in task_indices]))
    return predictor, _batch_size(options, loaded, window, device)


def _batch_size(options: SegmentOptions, model: LoadedModel, window: Sequence[int], device: torch.device) -> int:
    """The asked batch size, else one chosen from the model's memory per window and the free memory."""
    if options.batch_size:
        return options.batch_size
    per_window = window_memory_gb(window, model.manifest["architecture"].get("base_channels", 32),
                                  compute_dtype(device, options.precision))
    return choose_batch_size(device, per_window, available_memory_gb(device))


def _backend(options: SegmentOptions, model: LoadedModel, window: Sequence[int], device: torch.device,
             predictor: Any) -> Any:
    """``predictor``, or the same run by OpenVINO: asked for, or ``auto`` for a large model (>= 1 GB
    per window) on the CPU when OpenVINO is installed."""
    from ..network import openvino_backend

    backend = options.backend
    if backend == "auto":
        large = window_memory_gb(window, model.manifest["architecture"].get("base_channels", 32), None) >= 1.0
        backend = "openvino" if device.type == "cpu" and large and openvino_backend.is_available() else "torch"
    if backend == "torch":
        return predictor
    if device.type != "cpu":
        raise HermesError(f"--backend openvino runs on the CPU, not {device.type}; use --device cpu or --backend torch")
    key = sha256_file(model.path) if model.path is not None else None
    return openvino_backend.OpenVinoPredictor(predictor, (int(window[0]), int(window[1]), int(window[2])),
                                              cache_key=key)


def resolve_targets(model: LoadedModel, modality: str, targets: Union[str, Sequence[str]]) -> list[str]:
    """Target keys from user spellings; ``"all"`` means every target the model offers for the modality."""
    offered = model.targets_for(modality)
    if isinstance(targets, str):
        targets = offered if targets.strip().lower() == "all" else [t for t in targets.split(",") if t.strip()]
    if not targets:
        raise HermesError(f"no targets given; choose from: {', '.join(offered)} (or 'all')")
    keys: list[str] = []
    for name in targets:
        try:
            key = vocabulary.target(name).key
        except HermesError:
            close = vocabulary.suggest(name, offered)
            hint = f"did you mean: {', '.join(close)}?" if close else f"this model offers: {', '.join(offered)}"
            raise HermesError(f"unknown target '{name}' for {modality}; {hint}") from None
        if key not in offered:  # a right name the model does not offer: say what it offers, not near spellings
            raise HermesError(f"model '{model.name}' has no target '{key}' for {modality}; it offers: "
                              f"{', '.join(offered) or 'nothing for this modality'}")
        if key not in keys:
            keys.append(key)
    return keys


def segment_image(
    image: sitk.Image,
    *,
    modality: str,
    targets: Union[str, Sequence[str]],
    options: Optional[SegmentOptions] = None,
    keep_probabilities: bool = False,
    progress: Optional[ProgressCallback] = None,
    cancel: Optional[CancelToken] = None,
    **overrides: Any,
) -> SegmentationResult:
    """Segment ``targets`` in ``image`` (any geometry) and return masks on the input grid.

    ``modality``: CT, PET, MR-T1, MR-T2, cine-MR or MR (aliases accepted). ``targets``: keys,
    names or synonyms, a comma-separated string, or ``"all"`` (every target the model offers for
    the modality). ``options``: :class:`SegmentOptions` (model, device, precision, overlap,
    postprocessing...); ``overrides`` replace some of its fields, e.g.
    ``segment_image(image, modality="CT", targets="all", model="hermes-demo", fast=True)``.
    ``keep_probabilities``: keep the model-space probabilities (for
    :meth:`SegmentationResult.probability_maps`). ``progress(stage, fraction, message)`` is called
    as the run goes; ``cancel`` stops it within one batch of windows (:class:`CancelledError`).
    Raises :class:`HermesError` (one line) for a wrong request, before any work.

    Windows per forward pass (``batch_size``, None: chosen from memory): on the CPU two for small
    models (PyTorch convolves one-window 3D batches with a slower kernel: 2x per window of the demo
    model, measured), one for large ones (Hermes-R: as fast as two, half the activation memory:
    2.95 GB per window in float32, 1.56 GB in bf16); on a GPU as many as fit (up to 8).
    """
    options = dataclasses.replace(options or SegmentOptions(), **overrides)
    with notices.collect() as warnings:
        result = _segment(image, modality, targets, options, keep_probabilities=keep_probabilities,
                          progress=progress, cancel=cancel)
    result.warnings = list(warnings)
    return result


@contextlib.contextmanager
def _stage(name: str) -> Iterator[None]:
    """Turns a memory failure inside the block into the one-line error for stage ``name``."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        if is_memory_error(error):
            raise out_of_memory(name, error) from None
        raise


def _segment(image: sitk.Image, modality: str, targets: Union[str, Sequence[str]], options: SegmentOptions, *,
             keep_probabilities: bool, progress: Optional[ProgressCallback],
             cancel: Optional[CancelToken]) -> SegmentationResult:
    """:func:`segment_image`, its warnings aside."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    options.check()
    check_image(image)  # what reading a file refuses, for an image given in memory
    torch_device = select_device(options.device)
    compute_dtype(torch_device, options.precision)  # a wrong precision fails before any work
    loaded = options.model if isinstance(options.model, LoadedModel) else load(options.model)
    modality_key = vocabulary.modality(modality).key
    entry = loaded.modality_entry(modality_key)
    keys = resolve_targets(loaded, modality_key, targets)
    task_indices = [loaded.task_index(k, modality_key) for k in keys]
    overlap = options.window_overlap
    timings["load"] = time.perf_counter() - started

    report(progress, "preprocess", 0.0, "resampling to model space")
    mark = time.perf_counter()
    spacing = loaded.manifest["input"]["spacing_zyx_mm"]
    window = loaded.manifest["input"]["window_size_zyx"]
    reference = reference_geometry(image)
    with _stage("resampling to model space"):
        if modality_key == "CT":
            image = to_hounsfield(image)
        model_space = to_model_space(image, spacing_zyx=spacing, normalization=entry["normalization"],
                                     crop_to_body=options.crop_to_body, modality=modality_key,
                                     window_lattice=(window, overlap))
    timings["preprocess"] = time.perf_counter() - mark
    report(progress, "preprocess", 1.0, f"model space {'x'.join(map(str, model_space.array.shape))} voxels")
    if cancel is not None:
        cancel.raise_if_cancelled()

    mark = time.perf_counter()
    # The same query whatever was asked (LoadedModel.query), the asked targets' logits picked from it.
    predictor, batch_size = window_predictor(loaded, modality_key, task_indices, options, torch_device)
    plan = WindowPlan(near_targets=options.threshold / 4 if options.target_windows else None)
    with _stage("running the network"):
        probabilities = predict_volume(predictor, model_space.array, window_zyx=window, overlap=overlap,
                                       blending=options.blending, batch_size=batch_size,
                                       device=torch_device, plan=plan, progress=progress, cancel=cancel)
    timings["inference"] = time.perf_counter() - mark

    mark = time.perf_counter()
    with _stage("mapping the masks back to the input grid"):
        masks = _masks(probabilities, keys, task_indices, loaded, model_space, reference, image, options,
                       progress=progress, cancel=cancel)
    _explain_empty(masks, image, window, spacing)
    timings["postprocess"] = time.perf_counter() - mark
    report(progress, "postprocess", 1.0, "done")
    timings["total"] = time.perf_counter() - started
    # Where and how the run finished: after a GPU out-of-memory fallback, the CPU.
    return SegmentationResult(
        masks=masks, reference=reference, modality=modality_key, model_name=loaded.name,
        device=str(predictor.device), precision=precision_name(predictor.dtype), seconds=timings,
        windows={"windows": plan.windows, "lattice": plan.lattice},
        model_space=model_space if keep_probabilities else None,
        probabilities=probabilities if keep_probabilities else None,
    )
