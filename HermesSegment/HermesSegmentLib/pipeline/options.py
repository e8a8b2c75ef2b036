"""SegmentOptions: the one list of segmentation options.

It fills the ``hermes-segment segment`` command line (:func:`add_arguments`, :func:`from_args`), turns
back into that command line for the Slicer module's background process (:meth:`SegmentOptions.command_line`),
carries the Slicer panel's presets (:data:`PRESETS`), and is what ``pipeline.segment_image`` takes. An
option is added in one place: a field here (or in :class:`~HermesSegmentLib.postprocess.PostprocessOptions`)
with its default and, in its metadata, its help text and, when it is not ``--field-name`` (or
``--no-field-name`` for an option that is on by default), its flag.

Importing this module is cheap (no numpy, SimpleITK or torch): the CLI parser and the Slicer module use it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Union

from ..errors import HermesError
from ..postprocess.options import PostprocessOptions

if TYPE_CHECKING:
    from ..models.package import LoadedModel

#: The model used when none is named: the bundled demo model (Resources/Models/catalog.json).
DEFAULT_MODEL = "hermes-demo"

#: Window overlap of a ``fast`` run; 0.5 otherwise.
FAST_OVERLAP = 0.25
DEFAULT_OVERLAP = 0.5


@dataclass
class SegmentOptions:
    """How to segment; what to segment (the image, its modality, the targets) is asked separately.

    ``model``: catalog name, package path or a loaded model. ``device``: ``auto`` takes CUDA, then
    Apple MPS, then the CPU. ``precision``: ``auto``, ``float32`` or ``bfloat16``
    (:func:`inference.device.compute_dtype`). ``overlap``: window overlap in [0, 1); None means 0.5,
    or 0.25 with ``fast``. ``batch_size``: windows per forward pass (None: from memory,
    :func:`inference.device.choose_batch_size`). ``threshold``: applied to each target's own sigmoid,
    so targets may overlap (a tumour inside its organ). ``crop_to_body``: run windows only where the
    body is. ``target_windows``: run only the windows near the asked targets
    (inference.window_plan: the full run's masks, fewer windows). ``backend``: ``torch``, ``openvino``
    (network.openvino_backend, CPU) or ``auto``. ``postprocess``: per-target cleanup.
    """

    model: Union[str, Path, LoadedModel] = field(
        default=DEFAULT_MODEL, metadata={"help": f"model name or .safetensors file (default: {DEFAULT_MODEL})"})
    device: str = field(default="auto", metadata={"help": "auto, cuda, mps or cpu (default: auto)"})
    precision: str = field(default="auto", metadata={
        "help": "auto (default: bf16 where the GPU or CPU multiplies it natively, faster, masks within Dice 0.995; "
                "else float32), float32 (bit-reproducible) or bfloat16"})
    overlap: Optional[float] = field(default=None, metadata={
        "type": float, "help": "window overlap in [0, 1) (default 0.5; 0.25 with --fast)"})
    blending: str = field(default="gaussian", metadata={"choices": ("gaussian", "uniform")})
    batch_size: Optional[int] = field(default=None, metadata={
        "type": int, "help": "windows per forward pass (default: from the model's memory per window and the free "
                             "memory: one for large models such as Hermes-R on the CPU, two for small ones)"})
    fast: bool = field(default=False, metadata={
        "help": "fewer windows (overlap 0.25): about 2x faster, slightly rougher"})
    threshold: float = field(default=0.5, metadata={"help": "probability threshold per target (default 0.5)"})
    postprocess: PostprocessOptions = field(default_factory=PostprocessOptions)
    crop_to_body: bool = field(default=True, metadata={
        "flag": "--no-body-crop", "help": "run windows over the whole field of view"})
    backend: str = field(default="auto", metadata={"choices": ("auto", "torch", "openvino"), "help": (
        "what runs the network: torch, or OpenVINO on the CPU (optional: pip install openvino; faster, and a "
        "tenth of the memory for large models); auto (default) takes OpenVINO for large models on the CPU when it "
        "is installed")})
    target_windows: bool = field(default=True, metadata={
        "help": "run every window of the body, not only those near the asked targets (same masks; slower for a "
                "few targets)"})

    def check(self) -> None:
        """Refuse, with a one-line :class:`HermesError`, values no run can use (before any work)."""
        if self.overlap is not None and not 0 <= self.overlap < 1:
            raise HermesError(f"--overlap must be in [0, 1), got {self.overlap}")
        if not 0 < self.threshold <= 1:
            raise HermesError(f"--threshold must be in (0, 1] (a probability), got {self.threshold}")
        if self.batch_size is not None and self.batch_size < 0:
            raise HermesError(f"--batch-size must be 1 or more (leave it out to choose it from memory), "
                              f"got {self.batch_size}")
        island = self.postprocess.min_island_ml
        if island is not None and not 0 <= island < float("inf"):
            raise HermesError(f"--min-island-ml must be a volume >= 0 in mL, got {island}")
        for name in ("blending", "backend"):
            choices = next(spec.metadata["choices"] for spec in dataclasses.fields(self) if spec.name == name)
            if getattr(self, name) not in choices:
                raise HermesError(f"unknown --{name} {getattr(self, name)!r}; choose one of: {', '.join(choices)}")

    @property
    def window_overlap(self) -> float:
        """The overlap a run uses: ``overlap``, else 0.25 with ``fast``, else 0.5."""
        if self.overlap is not None:
            return self.overlap
        return FAST_OVERLAP if self.fast else DEFAULT_OVERLAP

    def command_line(self) -> list[str]:
        """The ``hermes-segment segment`` options that ask for these options (defaults left out)."""
        if not isinstance(self.model, (str, Path)):
            raise TypeError("a loaded model cannot go on a command line; give its name or path")
        arguments: list[str] = []
        for owner, spec in _option_fields(self):
            value, default = getattr(owner, spec.name), _default(spec)
            if value == default:
                continue
            arguments += [_flag(spec)] if isinstance(default, bool) else [_flag(spec), str(value)]
        return arguments


#: The Slicer panel's "Speed / quality" presets: the SegmentOptions fields each one sets.
PRESETS: dict[str, dict[str, Any]] = {
    "Balanced": {},
    "Fast": {"fast": True},
    "Best quality": {"overlap": 0.75, "precision": "float32"},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One command-line option per field of :class:`SegmentOptions`, nested postprocessing included."""
    for _owner, spec in _option_fields(SegmentOptions()):
        default, help_text = _default(spec), spec.metadata.get("help")
        if isinstance(default, bool):
            parser.add_argument(_flag(spec), action="store_true", help=help_text)
        elif "choices" in spec.metadata:
            parser.add_argument(_flag(spec), choices=spec.metadata["choices"], default=default, help=help_text)
        else:
            parser.add_argument(_flag(spec), type=spec.metadata.get("type", type(default)), default=default,
                                help=help_text)


def from_args(args: argparse.Namespace) -> SegmentOptions:
    """The :class:`SegmentOptions` of a command line parsed by a parser given :func:`add_arguments`."""
    def values(cls: type) -> dict[str, Any]:
        found = {}
        for spec in dataclasses.fields(cls):
            if spec.name == "postprocess":
                continue
            value = getattr(args, _flag(spec).lstrip("-").replace("-", "_"))
            found[spec.name] = (not value) if _default(spec) is True else value  # --no-X turns X off
        return found

    return SegmentOptions(**values(SegmentOptions), postprocess=PostprocessOptions(**values(PostprocessOptions)))


def _option_fields(options: SegmentOptions) -> Iterator[tuple[Any, dataclasses.Field]]:
    """(the dataclass holding the field, the field) for every option, in command-line order."""
    for spec in dataclasses.fields(options):
        if spec.name == "postprocess":
            yield from ((options.postprocess, inner) for inner in dataclasses.fields(options.postprocess))
        else:
            yield options, spec


def _default(spec: dataclasses.Field) -> Any:
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def _flag(spec: dataclasses.Field) -> str:
    if "flag" in spec.metadata:
        return spec.metadata["flag"]
    name = spec.name.replace("_", "-")
    return f"--no-{name}" if _default(spec) is True else f"--{name}"
