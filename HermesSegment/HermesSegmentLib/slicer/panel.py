"""Every decision of the Slicer panel, without Qt (SlicerNNUnet's pattern): what is enabled, what a click
does, what each progress event, the end of a run, a cancel or a scene close changes.

The widget (``HermesSegment.py``) forwards its signals here and copies :class:`PanelView` onto its
widgets; the tests drive this class under slicer-core with real MRML nodes and real background runs.

A run captures its inputs when it starts (:class:`RunRequest`): the result goes into the volume,
segmentation and model chosen then, whatever is selected when it ends. Its temporary folder (a copy
of the input) is deleted when it ends, whatever the outcome.

A run goes to this computer or to a `hermes-segment serve` server (**Run on**): the same background
process (``segment --server``: the image uploaded, the server's files downloaded), progress, Cancel and
result import. On a server the model list is the server's (:meth:`PanelController.test_connection`),
and nothing but the client needs to be installed here.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import HermesError
from ..pipeline.options import PRESETS as _PRESETS
from ..pipeline.options import SegmentOptions
from . import background as process
from . import install

__all__ = ["DEVICES", "HELP", "PRECISIONS", "PRESETS", "RUN_ON", "HermesError", "PanelController", "PanelView",
           "RunRequest"]

#: The module's help text (Slicer shows it at the top of the panel).
HELP = """Segment anatomical structures in CT, PET and MR with the Hermes universal model: pick the
input volume, its modality and the targets, then click <b>Segment</b>. A re-run replaces only the
segments this module created; your own segments are never modified.<br><br>
Python console (blocking, returns the segmentation node):<pre>
from HermesSegment import HermesSegmentLogic
seg = HermesSegmentLogic().segment(volumeNode, modality="CT", targets=["liver", "heart"], model="hermes-demo")</pre>
The bundled demo model is not for clinical use. <a href="https://github.com/HermesSegment/SlicerHermesSegment">Documentation</a>."""
#: Speed / quality presets of the panel (:data:`pipeline.options.PRESETS`).
PRESETS = _PRESETS
#: Device choices: label -> ``--device`` value. Apple's MPS is never picked by "Automatic" (some 3D
#: operators fail there, as TotalSegmentator found); it is offered explicitly.
DEVICES = {"Automatic (GPU if available, else CPU)": "auto", "NVIDIA GPU (CUDA)": "cuda", "CPU": "cpu",
           "Apple GPU (MPS, experimental)": "mps"}
#: Precision choices: label -> ``--precision`` value (``inference.device.PRECISION_CHOICES``). Automatic
#: leaves it to the preset (Best quality: float32), else bf16 where the hardware multiplies it natively.
PRECISIONS = {"Automatic": "auto", "float32 (bit-reproducible)": "float32",
              "bfloat16 (faster where supported)": "bfloat16"}

#: How the panel fills every :class:`SegmentOptions` field (``postprocess.`` for PostprocessOptions),
#: so that none is forgotten: parameter-node fields (saved with the scene) ...
PARAMETER_OPTIONS = {
    "batchSize": "batch_size", "threshold": "threshold", "cropToBody": "crop_to_body",
    "targetWindows": "target_windows", "sideConstraint": "postprocess.side_constraint",
    "singlePiece": "postprocess.single_piece", "keepLargest": "postprocess.keep_largest",
    "fillHoles": "postprocess.fill_holes",
}
#: ... and the rest (what sets each one, or why it is not offered).
OTHER_OPTIONS = {
    "model": "the model list", "device": "the device list", "backend": "the backend list (backend_entries)",
    "precision": "the precision list, else the preset", "overlap": "the preset", "fast": "the preset",
    "postprocess.min_island_ml": "removeIslands and minIslandMl",
    "blending": "not offered: Gaussian blending, as nnU-Net and MONAI do; uniform is for comparisons (command line)",
}
#: Where a run goes ("Run on"): label -> True for a server.
RUN_ON = {"This computer": False, "Server": True}


@dataclass
class PanelView:
    """What the panel shows; the widget copies it onto its widgets after every call."""

    #: The widgets a run's inputs come from: disabled while it runs (its inputs are captured anyway).
    INPUT_WIDGETS = ("inputVolumeSelector", "modalityComboBox", "modelComboBox", "outputSegmentationSelector",
                     "targetTree", "addModelFileButton", "runOnComboBox", "serverUrlLineEdit", "serverTokenLineEdit",
                     "testConnectionButton")

    segment_text: str = "Segment"
    segment_enabled: bool = True
    inputs_enabled: bool = True
    progress: int = 0
    status: str = ""
    install_message: str = ""
    install_enabled: bool = False
    download_enabled: bool = False
    download_tooltip: str = ""
    remove_enabled: bool = False  # only the user's own or downloaded packages, never the bundled one
    log: list[str] = field(default_factory=list)
    #: The engine's warnings in this run (:mod:`notices`: CT values converted to Hounsfield units, an
    #: irregular series resampled, a rule skipped, ...): shown above the bar until the next run starts.
    warnings: list[str] = field(default_factory=list)

    def warnings_html(self) -> str:
        """The warnings as the panel's warning box shows them (rich text), "" when there are none."""
        import html

        if not self.warnings:
            return ""
        items = "".join(f"<li>{html.escape(text)}</li>" for text in self.warnings)
        return f"<b>Check the result:</b><ul>{items}</ul>"


@dataclass
class RunRequest:
    """The inputs of one run, captured when Segment is clicked.

    ``server``: the address of a `hermes-segment serve` server to run on ("" for this computer), and
    its ``token`` ("": ``$HERMES_SEGMENT_TOKEN``). On a server, ``options``' device and batch size are
    the server's (the panel leaves them at their defaults), and ``client_id`` is the ID the run sends
    for the server's fair queue (:func:`panel_client_id`; "": this installation's).
    """

    volume: Any
    segmentation: Any
    model: str
    modality: str
    targets: list[str]
    options: SegmentOptions = field(default_factory=SegmentOptions)
    server: str = ""
    token: str = field(default="", repr=False)
    client_id: str = ""


@dataclass(frozen=True)
class ServerModel:
    """A model a server offers (its ``/v1/info``), listed like a local model package."""

    name: str
    title: str
    targets: dict[str, list[str]]
    source: str = "server"
    url: str | None = None
    available: bool = True


class PanelController:
    """The panel's state machine: idle -> (installing | running) -> idle.

    ``logic``: the MRML logic (default ``slicer.mrml_logic.HermesSegmentLogic``). ``temp_root``: where run folders
    are made (Slicer's temporary folder). ``python``: the interpreter of background runs.
    """

    def __init__(self, temp_root: str | Path, logic: Any = None, python: str | None = None) -> None:
        if logic is None:
            from .mrml_logic import MRMLLogic

            logic = MRMLLogic()
        self.logic = logic
        self.temp_root = Path(temp_root)
        self.python = python or sys.executable
        self.view = PanelView()
        self.request: RunRequest | None = None
        self.listings: dict[str, Any] = {}
        self._listing: Any = None
        #: Set when an install or a model import ended: the widget rebuilds its model and target lists.
        self.lists_changed = False
        #: A Yes/No question the widget must put to the user (a long run ahead), answered by :meth:`answer`.
        self.question: str | None = None
        #: The expected duration of the run being started (a large model off a GPU), else "".
        self.expected = ""
        self._pending: RunRequest | None = None
        self.result: Any = None
        self._run: process.BackgroundRun | None = None
        self._job: process.CommandSequence | None = None
        self._job_kind = ""
        self._run_dir: Path | None = None
        self._cancel_reason = ""
        #: Runs go to a server (see :meth:`set_run_on`); ``server_info`` is its ``/v1/info`` once connected.
        self.on_server = False
        self.server_info: dict[str, Any] | None = None
        self.missing = install.find_missing()
        self._show_missing()

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        return self._run is not None or self._job is not None

    def _set_idle(self) -> None:
        self.view.segment_text, self.view.inputs_enabled = "Segment", True
        self.view.segment_enabled = not self.missing
        self._show_missing()
        self.select_model(self._listing)

    def _show_missing(self) -> None:
        """What is missing for a local run; a server run needs none of it (the client needs no torch)."""
        self.view.install_message = self.missing.describe() if self.missing else ""
        self.view.install_enabled = bool(self.missing) and not self.busy
        self.view.segment_enabled = (self.on_server or not self.missing) and self._job is None

    # ------------------------------------------------------------------ run on
    def set_run_on(self, server: bool) -> None:
        """Run on a server (True) or on this computer; the widget then rebuilds its model list."""
        self.on_server = server
        self._show_missing()

    def test_connection(self, url: str, token: str, client_id: str = "") -> str:
        """Ask the server at ``url`` for its devices and models (``/v1/info``, at most 10 s); returns
        the line to show. Connected, the model list is the server's."""
        from ..server.client import ServerClient

        try:
            self.server_info = ServerClient(url, token or None, timeout=10.0, client_id=client_id or None).info()
        except HermesError as error:
            self.server_info = None
            return f"Not connected: {error}"
        info = self.server_info
        models = ", ".join(model["name"] for model in info["models"])
        return f"Connected: HermesSegment {info['version']} on {', '.join(info['devices'])}; models: {models}."

    # ------------------------------------------------------------------ models and targets
    def model_entries(self) -> list[tuple[str, str]]:
        """``(label, name)`` of every model for the model list: the server's when running on one (none
        before :meth:`test_connection`), else this computer's (none while packages are missing)."""
        if self.on_server:
            offered = (self.server_info or {}).get("models", [])
            self.listings = {m["name"]: ServerModel(m["name"], m["title"], m["targets"]) for m in offered}
        else:
            self.listings = {} if self.missing else {m.name: m for m in self.logic.available_models()}
        return [(m.title + ("" if m.available else " (not installed)"), name) for name, m in self.listings.items()]

    def target_checklist(self, model: str | None, modality: str | None,
                         stored: str | None) -> tuple[list[tuple[str, list[tuple[str, str, bool]]]], str]:
        """``([(region, [(key, name, checked), ...]), ...], note)`` for ``model`` and ``modality``.

        ``stored``: the remembered selection (JSON list). The note says why the list is empty
        (model not installed, unreadable) and what to do.
        """
        listing = self.listings.get(model or "")
        note, keys = self.select_model(listing), []
        if isinstance(listing, ServerModel):
            keys = listing.targets.get(modality or "", [])
        elif listing is not None and listing.available:
            try:
                keys = self.logic.targets_for(listing.name, modality)
            except (HermesError, OSError, ValueError, KeyError) as error:  # an unreadable package: say why
                note = f"Could not read the model: {error}"
        checked = set(remembered_targets(stored, keys))
        groups = [(region, [(key, name, key in checked) for key, name in targets])
                  for region, targets in self.logic.target_groups(keys)]
        return groups, note

    def select_model(self, listing: Any) -> str:
        """Enable Download only for a catalog entry with a URL; returns the note shown under the model."""
        self._listing = listing
        self.view.download_enabled = bool(listing is not None and listing.url and not listing.available
                                          and not self.busy)
        self.view.remove_enabled = bool(listing is not None and listing.available
                                        and listing.source not in ("bundled", "server") and not self.busy)
        if listing is None:
            self.view.download_tooltip = ""
            if self.on_server and self.server_info is None:
                return "Enter the server's address and token, then click Test connection to list its models."
            return ""
        if isinstance(listing, ServerModel):
            self.view.download_tooltip = "This model runs on the server."
            return ""
        if listing.available:
            self.view.download_tooltip = "Already installed."
            return ""
        if listing.url:
            self.view.download_tooltip = "Download the model file and check its SHA-256."
            return f"{listing.title} is not downloaded yet: click Download."
        self.view.download_tooltip = "No download address is known for this model; see the note above."
        links = " · ".join(f'<a href="{url}">{title}</a>' for title, url in getattr(listing, "weights_links", ()))
        note = f"{listing.title} is not installed: {listing.how_to_get or 'add its file with Add model file...'}."
        return note + (f"<br>Weights: {links}" if links else "")

    # ------------------------------------------------------------------ install
    def start_install(self) -> None:
        """Install what :func:`install.find_missing` found, in background processes (the GUI stays live)."""
        if self.busy or not self.missing:
            return
        self._start_job("install", install.install_commands(self.missing, self.python), "Installing Python packages...")

    def add_model_file(self, path: str | Path) -> str | None:
        """A package (.safetensors) is added at once; upstream's Hermes-R checkpoint (.pth) is imported
        in the background (the CLI's safe ``models import-upstream``: no unpickling of code). Returns a
        message for the user, None when a background import started."""
        from .. import models

        path = Path(path)
        if path.suffix.lower() == ".pth":
            command = [self.python, "-m", "HermesSegmentLib.cli", "models", "import-upstream", str(path)]
            self._start_job("import", [command], f"Importing {path.name} (a few minutes)...")
            return None
        return f"Added {models.add(path).stem}."

    def _start_job(self, kind: str, commands: list[list[str]], status: str) -> None:
        if self.busy:
            raise HermesError("wait for the current task to end, or cancel it")
        self._job, self._job_kind = process.CommandSequence(commands).start(), kind
        self.view.install_enabled = self.view.segment_enabled = self.view.inputs_enabled = False
        self.view.progress, self.view.status = 0, status

    # ------------------------------------------------------------------ runs
    def start_run(self, request: RunRequest, confirmed: bool = False) -> None:
        """Validate the request, write the input next to a fresh run folder and start the engine on it.

        A long run (large model off a GPU, see :mod:`estimate`) first measures this computer's
        per-window time if it is not known yet, then sets :attr:`question`; it starts on a Yes.
        """
        self._check(request)
        if request.server:
            self.expected = ""  # the server's device decides; its queue position and progress are shown
        elif not confirmed and not self._duration_accepted(request):
            return
        from .mrml_logic import volume_to_sitk

        image = volume_to_sitk(request.volume)
        self.temp_root.mkdir(parents=True, exist_ok=True)
        self._run_dir = Path(tempfile.mkdtemp(prefix="HermesSegment-", dir=self.temp_root))
        try:
            options = dataclasses.replace(request.options, model=request.model)
            if request.server:  # the server's own device and batch size
                defaults = SegmentOptions()
                options = dataclasses.replace(options, device=defaults.device, batch_size=defaults.batch_size)
            self._run, self._result_path = process.start_segmentation(
                image, self._run_dir, modality=request.modality, targets=request.targets, options=options,
                python=self.python, server=request.server, token=request.token, client_id=request.client_id)
        except BaseException:
            self._remove_run_dir()
            raise
        self.request, self.result, self._cancel_reason = request, None, ""
        starting = f"Starting: expected {self.expected}." if self.expected else "Starting..."
        self.view = PanelView(segment_text="Cancel", inputs_enabled=False, status=starting,
                              download_tooltip=self.view.download_tooltip)

    def _check(self, request: RunRequest) -> None:
        """:class:`HermesError` with what to do when ``request`` cannot start now."""
        if self.busy:
            raise HermesError("a run is already in progress; cancel it first")
        if self.on_server and not request.server:
            raise HermesError("enter the server's address (Run on: Server), or run on this computer")
        if self.missing and not request.server:
            raise HermesError(f"{self.missing.describe()} Click Install first.")
        if request.volume is None:
            raise HermesError("select an input volume")
        if not request.model:
            raise HermesError("click Test connection to list the server's models, then select one" if request.server
                              else "select a model")
        if not request.targets:
            raise HermesError("select at least one target")

    def _duration_accepted(self, request: RunRequest) -> bool:
        """True when the run may start now; else a measurement runs first or :attr:`question` is set.

        Sets :attr:`expected` (shown when the run starts) for a large model off a GPU.
        """
        from ..models import read_manifest, resolve
        from . import estimate
        from .mrml_logic import ijk_to_lps_array

        options = dataclasses.replace(request.options, model=request.model)
        manifest = read_manifest(resolve(request.model))
        self.expected = ""
        if not estimate.is_slow(manifest, options.device):
            return True
        self._pending = request
        seconds = estimate.cached_window_seconds(options)
        if seconds is None:
            self._start_job("measure", [estimate.measure_command(options, request.modality, self.python)],
                            "Measuring how long one window of this model takes on this computer...")
            return False
        grid = estimate.model_grid_zyx(request.volume.GetImageData().GetDimensions(),
                                       ijk_to_lps_array(request.volume), manifest)
        expected = estimate.Estimate(estimate.window_count(grid, manifest, options), seconds)
        self.expected, self.question = expected.describe(), estimate.question(expected)
        if self.question is None:
            self._pending = None
        return self.question is None

    def answer(self, yes: bool) -> None:
        """The user's answer to :attr:`question`: Yes starts the pending run."""
        request, self._pending, self.question = self._pending, None, None
        if yes and request is not None:
            self.start_run(request, confirmed=True)

    def cancel(self, reason: str = "Cancelled.") -> None:
        """Stop the run (its whole process tree) or the install; the end is handled by :meth:`poll`."""
        if self._run is not None and not self._run.finished:
            if not self._run.cancelled:  # the first reason stays (closing a scene also removes its nodes)
                self._cancel_reason = reason
            self._run.cancel()
        elif self._job is not None:
            self._job.cancel()

    def take_result(self) -> Any:
        """The segmentation node of the last finished run, once (the widget selects it as output)."""
        result, self.result = self.result, None
        return result

    def shutdown(self) -> None:
        """Cancel whatever runs and wait for it to end (the module is closing); nothing is imported."""
        self.cancel("Cancelled: the module was closed.")
        if self._run is not None:
            self._run.wait()
            self._run = None
        if self._job is not None:
            self._job.cancel()
            self._job = None
        self._remove_run_dir()
        self._set_idle()

    def node_removed(self, node: Any) -> None:
        """Removing the run's input volume or output segmentation cancels the run."""
        request = self.request
        if request is not None and self._run is not None and node in (request.volume, request.segmentation):
            self.cancel(f"Cancelled: '{node.GetName()}' was removed from the scene.")

    def scene_closing(self) -> None:
        self.cancel("Cancelled: the scene was closed.")

    def poll(self) -> str | None:
        """Read what the background process reported; returns an error to show, else None.

        Progress events move the bar by the whole run's fraction (:func:`process.overall_fraction`).
        """
        self.view.log = []
        if self._job is not None:
            return self._poll_job()
        if self._run is None:
            return None
        finished = self._run.finished  # checked first: what the child wrote before ending is read below
        for event in self._run.poll():
            if isinstance(event, process.ProgressEvent):
                self.view.progress = int(100 * event.overall)
                self.view.status = self._run.status_line()
            elif event.stream == "warning":
                self.view.warnings.append(event.text)
                self.view.log.append(f"Warning: {event.text}")
            else:
                self.view.log.append(event.text)
        return self._finish() if finished else None

    def _finish(self) -> str | None:
        run, request = self._run, self.request
        assert run is not None and request is not None
        self._run = None
        error = None
        try:
            if run.succeeded:
                self.result = self.logic.import_file(self._result_path, request.volume, request.segmentation,
                                                     model_name=request.model)
                count = len(self.view.warnings)
                warned = f", with {count} warning{'s' if count > 1 else ''} (above)" if count else ""
                self.view.status, self.view.progress = f"Done in {run.elapsed():.0f} s{warned}.", 100
            elif run.cancelled:
                self.view.status, self.view.progress = self._cancel_reason or "Cancelled.", 0
            else:
                error = f"Segmentation failed: {run.error()}"
                self.view.status, self.view.progress = error, 0
        except HermesError as failure:
            error = f"Could not load the result: {failure}"
            self.view.status = error
        finally:
            self._remove_run_dir()
            self._set_idle()
        return error

    def _poll_job(self) -> str | None:
        assert self._job is not None
        self.view.log.extend(self._job.poll())
        self.view.progress = int(100 * self._job.fraction())
        if not self._job.finished:
            return None
        job, kind, self._job = self._job, self._job_kind, None
        error = job.error()
        if kind == "measure":
            self._set_idle()
            request, self._pending = self._pending, None
            if error or request is None:
                self.view.status = f"Could not measure this computer's speed: {error}" if error else ""
                return self.view.status or None
            self.start_run(request)  # now with the measured time: sets the question or starts
            return None
        self.lists_changed = True
        self.missing = install.find_missing()
        what = "Installation" if kind == "install" else "Import"
        self.view.status = f"{what} failed: {error}" if error else f"{what} finished."
        self._set_idle()
        return self.view.status if error else None

    def _remove_run_dir(self) -> None:
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None


def on_slicer_startup() -> None:
    """Once Slicer has started: load the terminology context our segments name, register the samples."""
    import slicer

    from .. import vocabulary
    from . import sample_data

    if not slicer.modules.terminologies.logic().LoadTerminologyFromFile(str(vocabulary.TERMINOLOGY_FILE)):
        raise HermesError(f"Slicer could not load {vocabulary.TERMINOLOGY_FILE.name}; reinstall the extension")
    sample_data.register()


def modality_entries() -> list[tuple[str, str]]:
    """``(label, key)`` of every modality, for the modality list."""
    from .. import vocabulary

    return [(m.label, m.key) for m in vocabulary.load_vocabulary().modalities]


def backend_entries() -> list[tuple[str, str]]:
    """``(label, --backend value)`` for the backend list: OpenVINO only when it is installed."""
    import importlib.util

    entries = [("Automatic (OpenVINO for large models on the CPU when installed, else PyTorch)", "auto"),
               ("PyTorch", "torch")]
    if importlib.util.find_spec("openvino") is not None:
        entries.append(("OpenVINO (CPU; faster, a tenth of the memory for large models)", "openvino"))
    return entries


def run_options(parameters: Any, *, preset: str, device: str, backend: str = "auto",
                precision: str = "auto") -> SegmentOptions:
    """The run's :class:`SegmentOptions`: the parameter node's fields (:data:`PARAMETER_OPTIONS`; a batch
    size of 0 means "from memory"), the preset's, then the device, backend and precision lists
    (a precision other than Automatic overrides the preset's)."""
    from ..postprocess import PostprocessOptions

    values: dict[str, Any] = {}
    cleanup: dict[str, Any] = {"min_island_ml": parameters.minIslandMl if parameters.removeIslands else None}
    for name, path in PARAMETER_OPTIONS.items():
        owner, _, option = path.rpartition(".")
        (cleanup if owner else values)[option] = getattr(parameters, name)
    values["batch_size"] = values["batch_size"] or None
    values.update(PRESETS[preset], device=device, backend=backend)
    if precision != "auto":
        values["precision"] = precision
    return SegmentOptions(postprocess=PostprocessOptions(**cleanup), **values)


def reload_library() -> None:
    """Re-execute every loaded ``HermesSegmentLib`` module, submodules first (the panel's Reload)."""
    import importlib

    for name in sorted((n for n in sys.modules if n.split(".")[0] == "HermesSegmentLib"), reverse=True):
        importlib.reload(sys.modules[name])


def remembered_targets(stored: str | None, offered: Sequence[str]) -> list[str]:
    """The remembered selection restricted to what the model offers now (the stored list is kept as is)."""
    import json

    try:
        remembered = json.loads(stored or "[]")
    except ValueError:
        return []
    return [key for key in offered if key in remembered]


def stored_selection(selected: Sequence[str]) -> str:
    """The selection as remembered in the settings (a JSON list; see :func:`remembered_targets`)."""
    import json

    return json.dumps(list(selected))


def models_folder() -> str:
    """The user's model folder (made if missing), for "Open cache folder"."""
    from .models import user_models_dir

    user_models_dir().mkdir(parents=True, exist_ok=True)
    return str(user_models_dir())


def settings_key(model: str | None, modality: str | None) -> str:
    return f"HermesSegment/targets/{model}/{modality}"


#: Where "Run on", the server's address and its token are remembered (Slicer's settings of this
#: user, not the scene: a scene file is shared, a token must not travel with it).
RUN_ON_KEY, SERVER_URL_KEY = "HermesSegment/runOn", "HermesSegment/serverUrl"
SERVER_TOKEN_KEY = "HermesSegment/serverToken"
#: Where the panel remembers the client ID it sends to servers (see :func:`panel_client_id`).
CLIENT_ID_KEY = "HermesSegment/clientId"


def panel_client_id(remembered: str | None) -> str:
    """The client ID the panel sends with its server runs, so that the server's fair queue gives
    this Slicer a lane of its own even behind a shared NAT or proxy address: the one ``remembered``
    in Slicer's settings (:data:`CLIENT_ID_KEY`), else this installation's
    (``server.client.installation_client_id``, which the console API sends too), for the widget to
    remember; a new random one where ``$HERMES_SEGMENT_CLIENT_ID`` is malformed (the panel still opens)."""
    from ..server.client import installation_client_id, new_client_id
    from ..server.protocol import is_client_id

    if remembered and is_client_id(remembered):
        return remembered
    try:
        return installation_client_id()
    except HermesError:
        return new_client_id()

