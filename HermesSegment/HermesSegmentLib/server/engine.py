"""The segmentation pipeline as the server runs it: models loaded once per device, a job's
options checked against them, ``segment_image`` on the upload, the result files written.

A job's options are the keyword arguments of :func:`..pipeline.segment_image` (the same ones the
CLI and the Slicer module pass), less those the server decides: the device and batch size are
the server's, probabilities are kept when the job asks for them as an output, progress and
cancel belong to the job. :func:`job_options_model` builds the request schema from that
signature, so an option added to the pipeline is accepted by the server with no change here.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import pydantic

from .. import read, vocabulary, writers
from ..errors import HermesError
from ..inference import describe, select_device
from ..models import LoadedModel, load
from ..pipeline import resolve_targets, segment_image
from .protocol import RESULT_STEM
from .settings import ServerSettings

#: segment_image arguments a client does not choose.
SERVER_DECIDES = ("image", "device", "batch_size", "keep_probabilities", "progress", "cancel")
#: Output files a job can ask for; the ``.seg.nrrd`` is always written.
OUTPUT_KINDS = ("seg-nrrd", "nifti", "probabilities", "summary")


def job_options_model() -> type[pydantic.BaseModel]:
    """A pydantic model of the job options: segment_image's keyword arguments less :data:`SERVER_DECIDES`,
    ``model`` as a name, plus ``outputs`` and the NIfTI ``overlap_policy``. Unknown fields are refused."""
    hints = typing.get_type_hints(segment_image)
    fields: dict[str, Any] = {}
    for name, parameter in inspect.signature(segment_image).parameters.items():
        if name in SERVER_DECIDES:
            continue
        annotation = str if name == "model" else hints[name]
        default = ... if parameter.default is inspect.Parameter.empty else parameter.default
        fields[name] = (annotation, default)
    fields["outputs"] = (list[Literal[OUTPUT_KINDS]], ["seg-nrrd"])  # type: ignore[valid-type]
    fields["overlap_policy"] = (Literal["priority", "per_target"], "priority")
    return pydantic.create_model("JobOptions", __config__=pydantic.ConfigDict(extra="forbid"), **fields)


JobOptions = job_options_model()


def parse_options(sent: str | dict[str, Any]) -> Any:
    """Validated :data:`JobOptions` from what a client sent (JSON text or parsed); one-line :class:`HermesError` otherwise."""
    try:
        if isinstance(sent, dict):
            return JobOptions.model_validate(sent)
        return JobOptions.model_validate_json(sent or "{}")
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "options"
        raise HermesError(f"job options: {where}: {first['msg']} ({error.error_count()} problem(s) in all)") from None


def segment_kwargs(options: Any) -> dict[str, Any]:
    """The segment_image keyword arguments of a job (model excluded: the worker passes the loaded one)."""
    excluded = {"model", "outputs", "overlap_policy"}
    kwargs = {name: getattr(options, name) for name in type(options).model_fields if name not in excluded}
    kwargs["keep_probabilities"] = "probabilities" in options.outputs
    return kwargs


class Engine:
    """The models a server offers, loaded once on each of its devices."""

    def __init__(self, settings: ServerSettings) -> None:
        devices = [select_device(name) for name in settings.devices]
        self.devices = list(dict.fromkeys(str(device) for device in devices))
        self.device_names = [describe(device) for device in devices]
        self._models: dict[tuple[str, str], LoadedModel] = {}
        self._names: dict[str, str] = {}  # what the admin typed (a catalog name, an alias) -> the package's name
        for model in settings.models:
            for device in self.devices:
                loaded = load(model, device=device)
                self._models[(device, loaded.name)] = loaded
            self._names[model] = self._names[loaded.name] = loaded.name
        self.model_names = list(dict.fromkeys(self._names.values()))

    def model(self, name: str, device: Optional[str] = None) -> LoadedModel:
        """The loaded model called ``name`` (on ``device``, by default the first)."""
        key = self._names.get(name)
        if key is None:
            raise HermesError(f"this server does not offer the model {name[:80]!r}; it offers: "
                              f"{', '.join(self.model_names)}")
        return self._models[(device or self.devices[0], key)]

    def check(self, options: Any) -> dict[str, Any]:
        """The model, modality and target keys ``options`` resolve to; :class:`HermesError` (with
        suggestions) for an unknown model, modality or target, before anything is queued."""
        loaded = self.model(options.model)
        modality = vocabulary.modality(options.modality).key
        return {"model": loaded.name, "modality": modality,
                "targets": resolve_targets(loaded, modality, options.targets)}

    def describe_models(self) -> list[dict[str, Any]]:
        """Name, title, version and the targets offered per modality of every model."""
        described = []
        for name in self.model_names:
            loaded = self.model(name)
            manifest = loaded.manifest
            described.append({"name": name, "title": manifest.get("title", name), "version": manifest.get("version"),
                              "targets": {modality: loaded.targets_for(modality) for modality in loaded.modality_keys}})
        return described

    # ------------------------------------------------------------------ what a worker calls
    def segment(self, image_path: Path, options: Any, device: str, progress: Any, cancel: Any) -> Any:
        image = read.read_image(image_path)
        return segment_image(image, model=self.model(options.model, device), device=device, progress=progress,
                             cancel=cancel, **segment_kwargs(options))

    @staticmethod
    def write_results(result: Any, folder: Path, options: Any) -> dict[str, Path]:
        """Write the outputs ``options.outputs`` asks for (always the .seg.nrrd) into ``folder``."""
        written: list[Path] = []
        segmentation = folder / f"{RESULT_STEM}.seg.nrrd"
        writers.write_seg_nrrd(segmentation, result.masks, result.reference)
        written.append(segmentation)
        if "nifti" in options.outputs:
            written += writers.write_label_map_nifti(folder / f"{RESULT_STEM}.nii.gz", result.masks, result.reference,
                                                     overlap_policy=options.overlap_policy)
        if "probabilities" in options.outputs:
            written += writers.write_probability_maps(folder / f"{RESULT_STEM}_probabilities",
                                                      result.probability_maps(), result.reference)
        if "summary" in options.outputs:
            spacing = result.reference.GetSpacing()
            summary = folder / "summary.csv"
            writers.append_summary_csv(summary, [
                {"case": RESULT_STEM, "target": m.key, "voxels": m.voxels, "volume_ml": round(m.volume_ml(spacing), 3),
                 "seconds": round(result.seconds.get("total", 0.0), 2)} for m in result.masks])
            written.append(summary)
        return {path.name: path for path in written}

