"""The segmentation pipeline as the server runs it: models loaded once per device, a job request
checked against them, ``segment_image`` on the upload, the result files written.

A job request is what `hermes-segment segment` takes for one case: the modality and targets, a
:class:`~HermesSegmentLib.pipeline.SegmentOptions` (less :data:`.protocol.SERVER_DECIDES`: the
device and batch size are the server's; the model is one of the server's, by name), the output
format, the overlap policy and whether to write probabilities. :data:`JobRequest` is built from
those dataclasses, so an option added to ``SegmentOptions`` is accepted here with no change.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Optional, Union

import pydantic
import torch

from .. import notices, read, vocabulary, writers
from ..errors import HermesError
from ..inference import compute_dtype, describe, select_device
from ..models import LoadedModel, load
from ..pipeline import SegmentOptions
from ..pipeline.segment import resolve_targets, segment_image
from ..writers.case import summary_rows, write_case
from .protocol import DEFAULT_CASE_NAME, SERVER_DECIDES
from .settings import ServerSettings


def schema_of(cls: type, *, exclude: tuple[str, ...] = (), types: Optional[dict[str, Any]] = None) -> Any:
    """A pydantic model with the fields, types, defaults and help texts of dataclass ``cls`` (nested
    dataclasses too), less ``exclude``; ``types`` replaces some field types. Unknown fields are refused."""
    hints = typing.get_type_hints(cls, localns={"LoadedModel": LoadedModel})
    fields: dict[str, Any] = {}
    for spec in dataclasses.fields(cls):
        if spec.name in exclude:
            continue
        annotation = (types or {}).get(spec.name, hints[spec.name])
        default = spec.default if spec.default_factory is dataclasses.MISSING else spec.default_factory()
        if dataclasses.is_dataclass(annotation):
            annotation = schema_of(annotation)  # type: ignore[arg-type]
            default = annotation()
        help_text = spec.metadata.get("help")
        if help_text and default is True:  # the help of a --no-... option says what false does
            help_text = f"false: {help_text}"
        fields[spec.name] = (annotation, pydantic.Field(default, description=help_text))
    return pydantic.create_model(cls.__name__, __config__=pydantic.ConfigDict(extra="forbid"), **fields)


def dataclass_of(cls: type, values: pydantic.BaseModel, **replaced: Any) -> Any:
    """The ``cls`` instance of a :func:`schema_of` model's values (nested dataclasses too)."""
    fields = {}
    for spec in dataclasses.fields(cls):
        if spec.name in replaced or spec.name not in type(values).model_fields:
            continue
        value = getattr(values, spec.name)
        nested = typing.get_type_hints(cls, localns={"LoadedModel": LoadedModel})[spec.name]
        is_dataclass = isinstance(nested, type) and dataclasses.is_dataclass(nested)
        fields[spec.name] = dataclass_of(nested, value) if is_dataclass else value
    return cls(**fields, **replaced)


if TYPE_CHECKING:  # built at import time, so a type checker cannot see its fields
    JobOptions = Any
else:
    JobOptions = schema_of(SegmentOptions, exclude=SERVER_DECIDES, types={"model": str})


def plain_file_name(name: str) -> str:
    """``name`` if it can only name a file inside a folder: no folder part, no leading dot, no control
    character, at most 128 characters; ``ValueError`` otherwise."""
    if not 0 < len(name) <= 128 or name.startswith(".") or name != name.strip() \
            or any(c in "/\\:" or ord(c) < 32 for c in name):
        raise ValueError("must be a plain file name: no folder, no leading dot, at most 128 characters")
    return name


class JobRequest(pydantic.BaseModel):
    """One case to segment: what `hermes-segment segment` takes for it, less the input and output paths."""

    model_config = pydantic.ConfigDict(extra="forbid")
    modality: str = pydantic.Field(description="CT, PET, MR-T1, MR-T2, cine-MR or MR (aliases accepted)")
    targets: Union[str, list[str]] = pydantic.Field(
        "all", description="target keys, names or synonyms, a comma-separated string, or 'all'")
    options: JobOptions = pydantic.Field(default_factory=JobOptions,
                                         description="SegmentOptions, less the device and batch size")
    format: Literal[tuple(writers.FORMATS)] = pydantic.Field(  # type: ignore[valid-type]
        "seg-nrrd", description="output format (hermes-segment segment --format)")
    overlap_policy: Literal["priority", "per_target"] = "priority"
    probabilities: bool = pydantic.Field(False, description="also write per-target probability maps")
    frame: Optional[int] = pydantic.Field(None, description="the frame to segment in a 4D image")
    series: Optional[str] = pydantic.Field(
        None, description="a zipped DICOM folder holding several series: the series' UID or a part of its description")
    name: Annotated[str, pydantic.AfterValidator(plain_file_name)] = pydantic.Field(
        DEFAULT_CASE_NAME, description="the case's name: its files are called <name>.seg.nrrd and so on")


class MalformedRequest(HermesError):
    """A job request that does not fit the :class:`JobRequest` schema (HTTP 422)."""


def parse_request(sent: Union[str, dict[str, Any]]) -> JobRequest:
    """A validated :class:`JobRequest` from what a client sent (JSON text or parsed); one-line
    :class:`MalformedRequest` otherwise."""
    try:
        if isinstance(sent, dict):
            return JobRequest.model_validate(sent)
        return JobRequest.model_validate_json(sent or "{}")
    except pydantic.ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "request"
        more = f" (and {error.error_count() - 1} more)" if error.error_count() > 1 else ""
        raise MalformedRequest(f"job request: {where}: {first['msg']}{more}") from None


class Engine:
    """The models a server offers, loaded once on each of its devices, and how a job runs."""

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

    def check(self, request: JobRequest) -> dict[str, Any]:
        """The model, modality and target keys of ``request``; :class:`HermesError` (with
        suggestions) for an unknown model, modality or target, before anything is queued."""
        loaded = self.model(request.options.model)
        modality = vocabulary.modality(request.modality).key
        compute_dtype(torch.device(self.devices[0]), request.options.precision)
        dataclass_of(SegmentOptions, request.options, model=request.options.model).check()
        writers.check_overlap_policy(request.format, request.overlap_policy)
        return {"model": loaded.name, "modality": modality,
                "targets": resolve_targets(loaded, modality, request.targets)}

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
    def segment(self, image_path: Path, request: JobRequest, device: str, progress: Any, cancel: Any) -> Any:
        """Read the upload and segment it on ``device`` as `hermes-segment segment` would; the
        result's ``warnings`` hold those of the reading too (this thread's only)."""
        options = dataclass_of(SegmentOptions, request.options, model=self.model(request.options.model, device),
                               device=device)
        modality = vocabulary.modality(request.modality).key
        with notices.collect() as warnings:
            image = read.read_image(image_path, frame=request.frame, series=request.series, modality=modality)
            result = segment_image(image, modality=modality, targets=request.targets, options=options,
                                   keep_probabilities=request.probabilities, progress=progress, cancel=cancel)
        result.warnings = list(warnings)
        return result

    @staticmethod
    def write_results(result: Any, folder: Path, request: JobRequest) -> dict[str, Path]:
        """Write the case's files into the empty ``folder`` as the CLI names them, and its
        ``summary.csv``; returns them by name."""
        write_case(folder, request.name, result, writers.FORMATS[request.format],
                   overlap_policy=request.overlap_policy, probabilities=request.probabilities)
        seconds = round(result.seconds.get("total", 0.0), 2)
        writers.write_summary_rows(folder / "summary.csv", request.name,
                                   [{**row, "seconds": seconds} for row in summary_rows(request.name, result)])
        return {path.name: path for path in sorted(folder.iterdir())}
