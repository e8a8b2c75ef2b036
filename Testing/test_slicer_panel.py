"""Click-through tests of the Slicer panel: HermesSegment.py's widget code runs for real on PySide6
(offscreen) through Testing/slicer_gui, against slicer-core's MRML scene."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("PySide6", reason="the panel tests need the Qt binding from the test extra (PySide6)")
pytest.importorskip("slicer", reason="the panel tests need slicer-core")

from slicer_gui import (
    dialogs,
    slicer_app,
)

pytestmark = pytest.mark.slicer
MODULE_FILE = Path(__file__).resolve().parents[1] / "HermesSegment" / "HermesSegment.py"


@pytest.fixture
def gui(tmp_path):
    """slicer.app, an empty scene, recorded message boxes."""
    app = slicer_app.install(tmp_path)
    recorder = dialogs.Dialogs().install()
    yield app, recorder
    import slicer

    slicer.mrmlScene.Clear(1)


@pytest.fixture
def panel(gui):
    panel = slicer_app.ModulePanel(MODULE_FILE)
    panel.enter()
    yield panel
    panel.exit()
    panel.widget.cleanup()


def add_ct(name="CT", shape=(24, 32, 32), body_hu=40):
    """A small CT-like volume: air around a soft-tissue box (HU)."""
    import slicer
    import vtk

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    image = vtk.vtkImageData()
    image.SetDimensions(shape[2], shape[1], shape[0])
    image.AllocateScalars(vtk.VTK_SHORT, 1)
    node.SetAndObserveImageData(image)
    array = slicer.util.arrayFromVolume(node)
    array[:] = -1000
    array[4:-4, 8:-8, 8:-8] = body_hu
    slicer.util.arrayFromVolumeModified(node)
    return node


def check_first_target(panel):
    import qt

    panel.widget.targetItems()[0].setCheckState(0, qt.Qt.Checked)


def test_segment_starts_a_run(panel, gui):
    _app, recorder = gui
    volume = add_ct()
    panel.widget.ui.inputVolumeSelector.setCurrentNode(volume)
    check_first_target(panel)
    panel.widget.ui.segmentButton.click()
    assert not recorder.slot_errors, recorder.slot_errors
    assert panel.widget.ui.segmentButton.text == "Cancel"
    panel.widget.ui.segmentButton.click()  # cancel
    wait_until_idle(panel)


# ---------------------------------------------------------------------------------------------- helpers
def wait_until_idle(panel, limit_s=240.0):
    """Let the panel's timer poll the background run until it ends (a generous limit, not a timing test)."""
    import time

    import qt

    deadline = time.monotonic() + limit_s
    while panel.widget.controller.busy:
        assert time.monotonic() < deadline, "the background run did not end"
        qt.QApplication.processEvents()
        time.sleep(0.05)
    qt.QApplication.processEvents()


def start_segment(panel, volume):
    ui = panel.widget.ui
    ui.inputVolumeSelector.setCurrentNode(volume)
    ui.modalityComboBox.setCurrentIndex(ui.modalityComboBox.findData("CT"))
    check_first_target(panel)
    ui.segmentButton.click()


def run_folders(app):
    return sorted(Path(app.temporaryPath).glob("HermesSegment-*"))


# ---------------------------------------------------------------------------------------------- click-through
@pytest.mark.slow
def test_segment_click_through_puts_segments_in_the_scene(panel, gui):
    import slicer

    app, recorder = gui
    volume = add_ct()
    start_segment(panel, volume)
    ui = panel.widget.ui
    assert ui.segmentButton.text == "Cancel" and not ui.inputVolumeSelector.enabled and not ui.modelComboBox.enabled
    assert not ui.downloadModelButton.enabled and not ui.removeModelButton.enabled
    assert len(run_folders(app)) == 1
    wait_until_idle(panel)
    assert not recorder.slot_errors and not recorder.texts(), (recorder.slot_errors, recorder.texts())
    segmentation = panel.widget._parameterNode.outputSegmentation
    assert segmentation is not None and segmentation.GetSegmentation().GetNumberOfSegments() == 1
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 1
    assert ui.segmentButton.text == "Segment" and ui.inputVolumeSelector.enabled
    assert ui.progressBar.value == 100 and ui.statusLabel.text.startswith("Done")
    assert run_folders(app) == [], "the run folder (a copy of the input) must be deleted"
    # a second run starts from an empty bar
    start_segment(panel, volume)
    assert ui.progressBar.value == 0
    ui.segmentButton.click()
    wait_until_idle(panel)


@pytest.mark.slow
def test_warnings_of_a_run_are_shown_above_the_bar(panel, gui):
    """A CT of stored scanner values (air 0, water 1024) is converted to Hounsfield units with a warning:
    the panel shows it in its warning box (and the log), says so in the status, and clears it on the next run."""
    import slicer

    _app, recorder = gui
    volume = add_ct("stored values", body_hu=40)
    array = slicer.util.arrayFromVolume(volume)
    array[:] = np.where(array < -500, 0, array + 1024)  # air at 0, soft tissue near 1024 + 40
    slicer.util.arrayFromVolumeModified(volume)
    ui = panel.widget.ui
    assert ui.warningsLabel.isHidden()
    start_segment(panel, volume)
    wait_until_idle(panel)
    assert not recorder.slot_errors and not recorder.texts(), (recorder.slot_errors, recorder.texts())
    assert not ui.warningsLabel.isHidden() and "rescale was never applied" in ui.warningsLabel.text
    assert ui.warningsLabel.text.startswith("<b>Check the result:</b>")
    assert re.search(r"with \d+ warnings? \(above\)", ui.statusLabel.text)
    assert "Warning: " in ui.logTextEdit.toPlainText()
    start_segment(panel, add_ct("in HU"))  # the next run starts without the last run's warnings
    assert ui.warningsLabel.isHidden() and ui.warningsLabel.text == ""
    ui.segmentButton.click()
    wait_until_idle(panel)


def test_cancel_stops_the_run_and_imports_nothing(panel, gui):
    import slicer

    app, recorder = gui
    start_segment(panel, add_ct())
    panel.widget.ui.segmentButton.click()  # Cancel
    wait_until_idle(panel)
    assert panel.widget.ui.statusLabel.text == "Cancelled."
    assert slicer.mrmlScene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    assert run_folders(app) == [] and not recorder.texts()


@pytest.mark.slow
def test_result_goes_into_the_inputs_captured_at_start(panel, gui):
    first, second = add_ct("first"), add_ct("second", shape=(20, 30, 30))
    start_segment(panel, first)
    # The selector is disabled in the GUI; a script may still do it.
    panel.widget.ui.inputVolumeSelector.setCurrentNode(second)
    wait_until_idle(panel)
    segmentation = panel.widget._parameterNode.outputSegmentation
    assert segmentation is not None
    reference = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
    assert reference is first


def test_removing_the_input_volume_cancels_cleanly(panel, gui):
    import slicer

    app, recorder = gui
    volume = add_ct()
    start_segment(panel, volume)
    slicer.mrmlScene.RemoveNode(volume)
    wait_until_idle(panel)
    assert "was removed" in panel.widget.ui.statusLabel.text
    assert not recorder.slot_errors and run_folders(app) == []


def test_closing_the_scene_mid_run_cancels_and_reconnects(panel, gui):
    import slicer

    app, recorder = gui
    start_segment(panel, add_ct())
    slicer.mrmlScene.Clear(0)
    wait_until_idle(panel)
    assert "scene was closed" in panel.widget.ui.statusLabel.text
    assert panel.widget._parameterNode is not None, "the entered panel gets a new parameter node after the close"
    panel.widget.ui.fillHolesCheckBox.checked = True
    assert panel.widget._parameterNode.fillHoles
    assert not recorder.slot_errors and run_folders(app) == []


@pytest.mark.parametrize("returns_tag", [True, False], ids=["connectGui-returns-tag", "connectGui-returns-None"])
def test_leaving_the_module_disconnects_the_gui(gui, monkeypatch, returns_tag):
    from slicer_gui import parameter_node_wrapper

    monkeypatch.setattr(parameter_node_wrapper, "CONNECT_GUI_RETURNS_TAG", returns_tag)
    panel = slicer_app.ModulePanel(MODULE_FILE)
    for _ in range(3):
        panel.enter()
        panel.exit()
    node = panel.widget.logic.getParameterNode()
    assert node._guis == {}, "every GUI connection made on enter is undone on exit"
    before = node.fillHoles
    panel.widget.ui.fillHolesCheckBox.checked = not before
    assert node.fillHoles == before, "a widget changed after exit must not change the parameter node"
    panel.enter()
    panel.widget.ui.fillHolesCheckBox.checked = not before
    assert node.fillHoles == (not before) and len(panel.widget._parameterNode._guis) == 1
    panel.exit()


def test_island_size_keeps_its_range(panel):
    spin = panel.widget.ui.minIslandSpinBox
    assert (spin.minimum, spin.maximum, spin.decimals) == (0.0, 1000.0, 2)


def test_advanced_offers_the_segment_options_with_the_command_lines_defaults(panel, gui):
    """Left alone, the Advanced section asks for the CLI's defaults (the island rule aside, on in the
    panel); each option set there reaches the engine's command line."""
    import dataclasses
    import importlib.util

    from HermesSegmentLib.pipeline.options import SegmentOptions
    from HermesSegmentLib.postprocess import PostprocessOptions

    ui, widget = panel.widget.ui, panel.widget
    assert (ui.batchSizeSpinBox.minimum, ui.batchSizeSpinBox.maximum) == (0, 64)
    assert (ui.thresholdSpinBox.minimum, ui.thresholdSpinBox.maximum) == (0.05, 0.95)
    backends = [ui.backendComboBox.itemData(i) for i in range(ui.backendComboBox.count)]
    assert backends[:2] == ["auto", "torch"]
    assert ("openvino" in backends) == (importlib.util.find_spec("openvino") is not None)
    from HermesSegmentLib.slicer.panel import run_options

    chosen = dict(preset=ui.presetComboBox.currentText, device=ui.deviceComboBox.currentData,
                  backend=ui.backendComboBox.currentData, precision=ui.precisionComboBox.currentData)
    defaults = run_options(widget._parameterNode, **chosen)
    assert defaults == dataclasses.replace(SegmentOptions(), postprocess=PostprocessOptions(min_island_ml=0.5))

    ui.backendComboBox.setCurrentIndex(ui.backendComboBox.findData("torch"))
    ui.precisionComboBox.setCurrentIndex(ui.precisionComboBox.findData("float32"))
    ui.batchSizeSpinBox.value = 3
    ui.thresholdSpinBox.value = 0.4
    ui.targetWindowsCheckBox.checked = False
    ui.cropToBodyCheckBox.checked = False
    start_segment(panel, add_ct())
    command = widget.controller._run.command
    ui.segmentButton.click()  # cancel
    wait_until_idle(panel)
    for expected in (["--backend", "torch"], ["--precision", "float32"], ["--batch-size", "3"], ["--threshold", "0.4"]):
        assert command[command.index(expected[0]):][:2] == expected, command
    assert "--no-target-windows" in command and "--no-body-crop" in command
    _app, recorder = gui
    assert not recorder.slot_errors, recorder.slot_errors


def test_download_is_disabled_without_an_address(panel):
    ui = panel.widget.ui
    assert not ui.removeModelButton.enabled, "the bundled model cannot be removed"
    index = ui.modelComboBox.findData("hermes-r")
    ui.modelComboBox.setCurrentIndex(index)
    assert not ui.downloadModelButton.enabled
    assert "No download address" in ui.downloadModelButton.toolTip
    assert "import-upstream" in ui.modelInfoLabel.text or "not installed" in ui.modelInfoLabel.text


def test_remembered_selection_survives_a_model_that_cannot_be_read(panel, monkeypatch):
    ui = panel.widget.ui
    check_first_target(panel)
    key = panel.widget._settingsKey()
    import qt

    remembered = qt.QSettings().value(key)
    assert remembered and remembered != "[]"
    def unreadable(*args):
        raise OSError("unreadable")

    monkeypatch.setattr(panel.widget.controller.logic, "targets_for", unreadable)
    panel.widget.refreshTargets()
    assert ui.targetTree.topLevelItemCount == 0
    assert qt.QSettings().value(key) == remembered


def test_missing_packages_are_shown_and_installed_from_the_panel(gui, monkeypatch):
    import sys

    from HermesSegmentLib.slicer import install

    state = {"missing": install.Missing("is not installed (it comes through the PyTorch extension)",
                                        ["jsonschema>=4.18"])}
    monkeypatch.setattr(install, "find_missing", lambda *a: state["missing"])
    commands = []

    def fake_commands(missing, python=None, folder=None):
        commands.append(missing)
        state["missing"] = install.Missing()
        return [[sys.executable, "-c", "print('Successfully installed jsonschema')"]]

    monkeypatch.setattr(install, "install_commands", fake_commands)
    panel = slicer_app.ModulePanel(MODULE_FILE)
    panel.enter()
    ui = panel.widget.ui
    assert not ui.installFrame.isHidden() and "PyTorch is not installed" in ui.installLabel.text
    assert "jsonschema" in ui.installLabel.text
    assert not ui.segmentButton.enabled and ui.modelComboBox.count == 0
    ui.installButton.click()
    assert not ui.installButton.enabled
    wait_until_idle(panel)
    assert "Successfully installed jsonschema" in ui.logTextEdit.toPlainText()
    assert ui.installLabel.text == "" and ui.segmentButton.enabled
    assert ui.modelComboBox.count >= 1 and panel.widget.targetItems(), "lists are rebuilt after the install"
    panel.exit()


def test_self_test_skips_inference_without_dependencies(gui, monkeypatch):
    from HermesSegmentLib.slicer import install

    monkeypatch.setattr(install, "find_missing", lambda *a: install.Missing("is not installed", []))
    panel = slicer_app.ModulePanel(MODULE_FILE)
    messages: list[str] = []
    test = panel.python_module.HermesSegmentTest()
    monkeypatch.setattr(test, "delayDisplay", messages.append)
    test.runTest()
    assert messages and messages[0].startswith("Inference test skipped: PyTorch is not installed")


def test_reload_reloads_the_library(panel, monkeypatch):
    import importlib

    import slicer

    reloaded, module_reloaded = [], []
    monkeypatch.setattr(importlib, "reload", lambda module: reloaded.append(module.__name__))
    monkeypatch.setattr(slicer.ScriptedLoadableModule.ScriptedLoadableModuleWidget, "onReload",
                        lambda self: module_reloaded.append(True))
    panel.widget.onReload()
    assert {"HermesSegmentLib", "HermesSegmentLib.slicer.panel", "HermesSegmentLib.slicer.background"} <= set(reloaded)
    assert reloaded.index("HermesSegmentLib.slicer.panel") < reloaded.index("HermesSegmentLib"), "submodules first"
    assert module_reloaded


def test_opening_the_panel_does_not_import_torch(tmp_path):
    import subprocess
    import sys

    code = (
        f"import sys, pathlib; sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(MODULE_FILE.parent)!r}]\n"
        "from slicer_gui import slicer_app\n"
        f"slicer_app.install(pathlib.Path({str(tmp_path)!r}))\n"
        f"panel = slicer_app.ModulePanel(pathlib.Path({str(MODULE_FILE)!r})); panel.enter()\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HERMES_SEGMENT_HOME": str(tmp_path / "home")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_sample_data_registers_at_startup(gui):
    import slicer

    app, _ = gui
    panel = slicer_app.ModulePanel(MODULE_FILE)  # Slicer keeps the module object for its whole life
    app.startupCompleted.emit()
    assert panel.module is not None
    sources = slicer.modules.sampleDataSources["HermesSegment"]
    assert [s.sampleName for s in sources] == ["HermesPhantomCT", "HermesHeadNeckCT"]
    assert all(callable(source.customDownloader) for source in sources)


def test_hermes_r_shows_where_the_weights_are_and_imports_a_pth_in_the_background(panel, gui, monkeypatch, tmp_path):
    import qt

    ui = panel.widget.ui
    ui.modelComboBox.setCurrentIndex(ui.modelComboBox.findData("hermes-r"))
    assert "drive.google.com" in ui.modelInfoLabel.text and "pan.baidu.com" in ui.modelInfoLabel.text
    assert ui.modelInfoLabel.openExternalLinks
    checkpoint = tmp_path / "hermes_r.pth"
    checkpoint.write_bytes(b"not a checkpoint")
    monkeypatch.setattr(qt.QFileDialog, "getOpenFileName", staticmethod(lambda *a: str(checkpoint)))
    ui.addModelFileButton.click()
    assert panel.widget.controller.busy and not ui.segmentButton.enabled
    assert "Importing hermes_r.pth" in ui.statusLabel.text
    wait_until_idle(panel)
    _app, recorder = gui
    assert recorder.texts() and recorder.texts()[0].startswith("Import failed:"), recorder.texts()
    assert ui.segmentButton.enabled


#: Hermes-R's layout (72 task-prior rows, 6 modality slots, five prior sites) at a tiny width.
TINY_HERMES_R: dict[str, Any] = dict(base_channels=8, blocks_per_stage=(1, 1, 1, 1), fusion_depths=(1, 1, 1, 1, 1),
                     num_task_priors=72, num_modality_slots=6, modality_tokens=2, head_dim=16)


def tiny_hermes_r_interpreter(folder):
    """An interpreter for the panel's background jobs whose Hermes-R is :data:`TINY_HERMES_R` (the
    import then checks a checkpoint against that layout): the job's command line runs unchanged."""
    import sys

    launcher = folder / "tiny_hermes_r.py"
    launcher.write_text(
        "import runpy, sys\n"
        "from HermesSegmentLib.models import manifest\n"
        "from HermesSegmentLib.network import HermesConfig\n"
        f"manifest.HERMES_R = HermesConfig(**{TINY_HERMES_R!r})\n"
        "assert sys.argv[1] == '-m'\n"
        "sys.argv = sys.argv[2:]\n"
        "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n", encoding="utf-8")
    python = folder / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{launcher}" "$@"\n', encoding="utf-8")
    python.chmod(0o755)
    return str(python)


def test_a_hermes_r_checkpoint_is_imported_from_the_panel(panel, gui, monkeypatch, tmp_path):
    """Upstream's checkpoint saved as a plain state dict (torch.save), chosen in Add model file...: imported
    in the background (read with weights_only=True), Hermes-R is then installed, offers its CT targets,
    and holds exactly the checkpoint's tensors."""
    import qt
    import torch

    from HermesSegmentLib import models
    from HermesSegmentLib.network import HermesConfig, HermesNetwork

    torch.manual_seed(0)
    state = HermesNetwork(HermesConfig(**TINY_HERMES_R)).state_dict()
    checkpoint = tmp_path / "hermes_r.pth"
    torch.save(state, checkpoint)
    ui, controller = panel.widget.ui, panel.widget.controller
    controller.python = tiny_hermes_r_interpreter(tmp_path)
    ui.modelComboBox.setCurrentIndex(ui.modelComboBox.findData("hermes-r"))
    assert ui.modelComboBox.currentText.endswith("(not installed)") and not panel.widget.targetItems()
    monkeypatch.setattr(qt.QFileDialog, "getOpenFileName", staticmethod(lambda *a: str(checkpoint)))
    ui.addModelFileButton.click()
    assert controller.busy and "Importing hermes_r.pth" in ui.statusLabel.text
    wait_until_idle(panel)
    _app, recorder = gui
    assert not recorder.texts() and not recorder.slot_errors, (recorder.texts(), recorder.slot_errors)
    assert ui.statusLabel.text == "Import finished."
    assert ui.modelComboBox.currentData == "hermes-r" and not ui.modelComboBox.currentText.endswith("(not installed)")
    ui.modalityComboBox.setCurrentIndex(ui.modalityComboBox.findData("CT"))
    assert len(panel.widget.targetItems()) > 10, "Hermes-R offers its CT targets"
    imported = models.load(models.resolve("hermes-r")).network.state_dict()
    assert list(imported) == list(state) and all(torch.equal(imported[k], v) for k, v in state.items())


@pytest.mark.slow
def test_a_long_cpu_run_is_measured_then_asked_first(panel, gui, monkeypatch):
    import qt

    from HermesSegmentLib.slicer import estimate

    monkeypatch.setattr(estimate, "LARGE_BASE_CHANNELS", 1)  # the demo model plays a large model
    monkeypatch.setattr(estimate, "ASK_ABOVE_SECONDS", 0.0)
    _app, recorder = gui
    ui = panel.widget.ui
    ui.deviceComboBox.setCurrentIndex(ui.deviceComboBox.findData("cpu"))
    volume = add_ct()
    start_segment(panel, volume)
    assert "Measuring" in ui.statusLabel.text and panel.widget.controller.busy
    wait_until_idle(panel)
    assert recorder.texts() and "expected to take about" in recorder.texts()[-1], recorder.texts()
    assert "windows of" in recorder.texts()[-1] and "GPU" in recorder.texts()[-1]
    assert panel.widget._parameterNode.outputSegmentation is None, "No: nothing ran"
    assert estimate.cache_file().is_file()
    recorder.answers.append(qt.QMessageBox.Yes)
    ui.segmentButton.click()  # the time is cached now: asked at once, Yes starts the run
    assert len(recorder.texts()) == 2 and panel.widget.controller.busy
    assert ui.statusLabel.text.startswith("Starting: expected about"), ui.statusLabel.text
    wait_until_idle(panel)
    assert panel.widget._parameterNode.outputSegmentation is not None


# ---------------------------------------------------------------------------------------------- run on a server
def _test_connection(ui, server) -> None:
    """Test connection: a wrong token is refused, the right one lists the server's device and models."""
    from serving import TOKEN

    ui.serverUrlLineEdit.text = server.url
    ui.serverTokenLineEdit.text = "not-the-token-0123456789"
    ui.testConnectionButton.click()
    assert "refused the token" in ui.serverInfoLabel.text and ui.modelComboBox.count == 0
    ui.serverTokenLineEdit.text = TOKEN
    ui.testConnectionButton.click()
    assert ui.serverInfoLabel.text.startswith("Connected") and "CPU" in ui.serverInfoLabel.text
    assert ui.modelComboBox.currentData == "hermes-demo" and not ui.removeModelButton.enabled


def _assert_a_local_run_gives_the_same_segments(panel, volume, targets) -> None:
    """The server's segments are those of a local run with the panel's options."""
    import dataclasses

    from HermesSegmentLib.slicer.mrml_logic import MRMLLogic
    from HermesSegmentLib.slicer.panel import run_options
    from test_slicer_logic import segment_voxels

    ui = panel.widget.ui
    remote = panel.widget._parameterNode.outputSegmentation
    options = dataclasses.replace(run_options(panel.widget._parameterNode, preset=ui.presetComboBox.currentText,
                                              device="cpu", backend=ui.backendComboBox.currentData,
                                              precision=ui.precisionComboBox.currentData), model="hermes-demo")
    local = MRMLLogic().segment(volume, "CT", targets, options=options)
    owned_local, owned_remote = MRMLLogic.owned_segments(local), MRMLLogic.owned_segments(remote)
    assert list(owned_remote) == list(owned_local) == targets
    for key in targets:
        assert segment_voxels(remote, owned_remote[key]) == segment_voxels(local, owned_local[key]), key
    assert sum(segment_voxels(remote, segment)[2] for segment in owned_remote.values()) > 1000


def _client_id_the_server_saw(server) -> str:
    """The client ID the panel remembers in Slicer's settings, which its run sent to the server."""
    import qt

    from HermesSegmentLib.server.protocol import CLIENT_ID_PATTERN
    from HermesSegmentLib.slicer.panel import CLIENT_ID_KEY

    client_id = qt.QSettings().value(CLIENT_ID_KEY)
    assert re.fullmatch(CLIENT_ID_PATTERN, client_id), client_id
    assert any(f"queued for 127.0.0.1 {client_id}" in line for line in server.output), server.log()
    return client_id


def _cancel_a_server_run(panel, app, server) -> None:
    """Cancel stops the run; the client deletes its job and the server drops it."""
    import time

    import qt

    ui = panel.widget.ui
    ui.segmentButton.click()
    ui.segmentButton.click()  # Cancel
    wait_until_idle(panel)
    assert ui.statusLabel.text == "Cancelled." and run_folders(app) == []
    for _ in range(600):  # the client deletes its job when stopped; the server drops it
        if not server.job_folders():
            break
        qt.QApplication.processEvents()
        time.sleep(0.1)
    assert server.job_folders() == []


@pytest.mark.slow
def test_run_on_server_click_through_gives_the_local_segments(gui, tmp_path, monkeypatch):
    """Run on: Server, on a laptop without PyTorch: Test connection lists the server's device and
    models, Segment runs there with the same progress and import (the segments of a local run with the
    same options), Cancel stops it, and the address and token are remembered, and so is the client ID
    that the run sends for the server's fair queue."""
    pytest.importorskip("fastapi", reason="the server needs the server extra")
    import qt
    import SimpleITK as sitk
    import slicer

    from HermesSegmentLib.slicer import install
    from HermesSegmentLib.slicer.panel import RUN_ON_KEY, SERVER_URL_KEY
    from serving import TOKEN, phantom_crops, running_server
    from test_slicer_logic import _itk_into_volume

    app, recorder = gui
    monkeypatch.setattr(install, "find_missing", lambda *a: install.Missing("is not installed", []))
    volume = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "crop")
    _itk_into_volume(sitk.ReadImage(str(phantom_crops(tmp_path / "phantom", 1)[0])), volume)
    with running_server(tmp_path / "server") as server:
        panel = slicer_app.ModulePanel(MODULE_FILE)
        panel.enter()
        ui = panel.widget.ui
        assert not ui.segmentButton.enabled and ui.serverUrlLineEdit.isHidden(), "a local run needs PyTorch here"
        ui.runOnComboBox.setCurrentIndex(ui.runOnComboBox.findText("Server"))
        assert ui.segmentButton.enabled and not ui.serverUrlLineEdit.isHidden() and not ui.deviceComboBox.enabled
        assert ui.modelComboBox.count == 0 and "Test connection" in ui.modelInfoLabel.text
        assert ui.serverTokenLineEdit.echoMode == qt.QLineEdit.Password
        _test_connection(ui, server)

        ui.inputVolumeSelector.setCurrentNode(volume)
        ui.modalityComboBox.setCurrentIndex(ui.modalityComboBox.findData("CT"))
        ui.selectAllButton.click()
        targets = panel.widget.selectedTargets()
        ui.segmentButton.click()
        assert ui.segmentButton.text == "Cancel" and not ui.runOnComboBox.enabled and not ui.serverUrlLineEdit.enabled
        wait_until_idle(panel)
        assert not recorder.slot_errors and not recorder.texts(), (recorder.slot_errors, recorder.texts())
        assert ui.statusLabel.text.startswith("Done") and ui.progressBar.value == 100
        assert f"hermes-demo on CPU at {server.url}" in ui.logTextEdit.toPlainText(), "it ran on the server"
        client_id = _client_id_the_server_saw(server)
        assert run_folders(app) == [] and server.job_folders() == []
        _assert_a_local_run_gives_the_same_segments(panel, volume, targets)

        _cancel_a_server_run(panel, app, server)
        assert qt.QSettings().value(SERVER_URL_KEY) == server.url

        ui.serverUrlLineEdit.text = ""
        ui.segmentButton.click()
        assert recorder.texts()[-1].startswith("Segmentation could not start: enter the server's address")
        panel.exit()
        panel.widget.cleanup()

    assert qt.QSettings().value(RUN_ON_KEY) == "Server"
    again = slicer_app.ModulePanel(MODULE_FILE)
    again.enter()
    assert again.widget.ui.runOnComboBox.currentText == "Server" and again.widget.ui.serverTokenLineEdit.text == TOKEN
    assert again.widget.clientId == client_id
    again.exit()
    again.widget.cleanup()
