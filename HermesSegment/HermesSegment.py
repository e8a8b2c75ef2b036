"""HermesSegment (Hermes universal segmentation): thin Module, parameter node, Widget, Logic, Test. Every decision
of the panel lives in ``HermesSegmentLib.slicer.panel`` (Qt-free, tested under slicer-core); the widget forwards
its signals there and copies the controller's view onto the widgets."""

from typing import Annotated

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import Decimals, WithinRange, findChildWidgetForParameter, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin


class HermesSegment(ScriptedLoadableModule):
    """Module description; registers the samples and the terminology context once Slicer has started."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Hermes Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.contributors = ["HermesSegment Developers (HermesSegment project)"]
        from HermesSegmentLib.slicer.panel import HELP
        self.parent.helpText = HELP
        self.parent.acknowledgementText = "Hermes: context-prior learning for universal medical image segmentation."
        slicer.app.connect("startupCompleted()", self.onStartupCompleted)

    def onStartupCompleted(self):
        from HermesSegmentLib.slicer.panel import on_slicer_startup
        on_slicer_startup()


@parameterNodeWrapper
class HermesSegmentParameterNode:
    """Panel state saved with the scene (the combo boxes filled at run time are remembered in QSettings)."""

    inputVolume: slicer.vtkMRMLScalarVolumeNode
    outputSegmentation: slicer.vtkMRMLSegmentationNode
    sideConstraint: bool = True
    singlePiece: bool = True
    keepLargest: bool = False
    fillHoles: bool = False
    removeIslands: bool = True
    minIslandMl: Annotated[float, WithinRange(0.0, 1000.0), Decimals(2)] = 0.5
    batchSize: Annotated[int, WithinRange(0, 64)] = 0  # 0: from memory
    threshold: Annotated[float, WithinRange(0.05, 0.95), Decimals(2)] = 0.5
    cropToBody: bool = True
    targetWindows: bool = True


class HermesSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: forwards every signal to ``HermesSegmentLib.slicer.panel.PanelController``."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self._parameterNode = self._guiTag = None
        self._timer = qt.QTimer()
        self._timer.connect("timeout()", self.onPoll)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        from HermesSegmentLib.slicer import panel
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HermesSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.uiWidget, self.ui = uiWidget, slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = HermesSegmentLogic()
        self.controller = panel.PanelController(slicer.app.temporaryPath, self.logic)
        for label, key in panel.modality_entries():
            self.ui.modalityComboBox.addItem(label, key)
        self.ui.presetComboBox.addItems(list(panel.PRESETS))
        for combo, entries in ((self.ui.deviceComboBox, panel.DEVICES.items()),
                               (self.ui.backendComboBox, panel.backend_entries()),
                               (self.ui.precisionComboBox, panel.PRECISIONS.items())):
            for label, value in entries:
                combo.addItem(label, value)
        settings, runOn = qt.QSettings(), self.ui.runOnComboBox
        runOn.addItems(list(panel.RUN_ON))
        runOn.setCurrentIndex(max(0, runOn.findText(settings.value(panel.RUN_ON_KEY, ""))))
        self.ui.serverUrlLineEdit.text = settings.value(panel.SERVER_URL_KEY, "")
        self.ui.serverTokenLineEdit.text = settings.value(panel.SERVER_TOKEN_KEY, "")
        self.clientId = panel.panel_client_id(settings.value(panel.CLIENT_ID_KEY, ""))
        settings.setValue(panel.CLIENT_ID_KEY, self.clientId)
        self.onRunOnChanged(refresh=False)
        for name, signal, slot in (
                ("modalityComboBox", "currentIndexChanged(int)", self.refreshTargets),
                ("modelComboBox", "currentIndexChanged(int)", self.refreshTargets),
                ("inputVolumeSelector", "currentNodeChanged(vtkMRMLNode*)", self.onInputChanged),
                ("targetSearchBox", "textChanged(QString)", self.onSearch),
                ("targetTree", "itemChanged(QTreeWidgetItem*,int)", lambda *_: self._showTargetCount(remember=True)),
                ("selectAllButton", "clicked()", lambda: self.checkAll(qt.Qt.Checked)),
                ("selectNoneButton", "clicked()", lambda: self.checkAll(qt.Qt.Unchecked)),
                ("installButton", "clicked()", self.onInstall),
                ("addModelFileButton", "clicked()", self.onAddModelFile),
                ("downloadModelButton", "clicked()", self.onDownload),
                ("openCacheFolderButton", "clicked()", self.onOpenCacheFolder),
                ("removeModelButton", "clicked()", self.onRemoveModel),
                ("advancedCollapsibleButton", "contentsCollapsed(bool)", self.onAdvancedToggled),
                ("runOnComboBox", "currentIndexChanged(int)", lambda *_: self.onRunOnChanged()),
                ("serverUrlLineEdit", "editingFinished()", self.rememberServer),
                ("serverTokenLineEdit", "editingFinished()", self.rememberServer),
                ("testConnectionButton", "clicked()", self.onTestConnection),
                ("segmentButton", "clicked()", self.onSegmentButton)):
            getattr(self.ui, name).connect(signal, slot)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeRemovedEvent, self.onNodeRemoved)
        self.refreshModels()
        self.enter()
        self.showView()

    def cleanup(self):
        self.controller.shutdown()
        self.removeObservers()
        self._timer.stop()

    def exit(self):
        self.setParameterNode(None)

    def onReload(self):
        """Reload ``HermesSegmentLib`` too (as SlicerMONAIAuto3DSeg does), then the module."""
        from HermesSegmentLib.slicer.panel import reload_library
        self.controller.shutdown()
        reload_library()
        ScriptedLoadableModuleWidget.onReload(self)

    def onSceneStartClose(self, caller, event):
        self.controller.scene_closing()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event):
        if self.parent.isEntered:
            self.enter()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeRemoved(self, caller, event, node):
        self.controller.node_removed(node)

    def enter(self):
        """Each entry connects the GUI to the scene's parameter node (and picks a volume if none)."""
        parameterNode = self.logic.getParameterNode()
        self.setParameterNode(parameterNode)
        if not parameterNode.inputVolume:
            parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

    def setParameterNode(self, parameterNode):
        """Connect the GUI to one parameter node; the tag of the first GUI is 0, so compare with None."""
        if self._parameterNode is not None and self._guiTag is not None:
            self._parameterNode.disconnectGui(self._guiTag)
        self._parameterNode, self._guiTag = parameterNode, None
        if parameterNode is not None:
            self._guiTag = parameterNode.connectParametersToGui(
                {name: findChildWidgetForParameter(self.uiWidget, name) for name in parameterNode.allParameters})

    def showView(self):
        view = self.controller.view
        self.ui.installFrame.visible, self.ui.installLabel.text = bool(view.install_message), view.install_message
        self.ui.installButton.enabled, self.ui.removeModelButton.enabled = view.install_enabled, view.remove_enabled
        self.ui.segmentButton.text, self.ui.segmentButton.enabled = view.segment_text, view.segment_enabled
        for name in view.INPUT_WIDGETS:
            getattr(self.ui, name).enabled = view.inputs_enabled
        self.ui.downloadModelButton.enabled = view.download_enabled
        self.ui.downloadModelButton.toolTip = view.download_tooltip
        self.ui.progressBar.value, self.ui.statusLabel.text = view.progress, view.status
        self.ui.warningsLabel.visible, self.ui.warningsLabel.text = bool(view.warnings), view.warnings_html()
        for line in view.log:
            self.ui.logTextEdit.appendPlainText(line)

    def onInstall(self):
        self.controller.start_install()
        self.onPoll()
        self._timer.start(200)

    def onInputChanged(self, node):
        guess = self.logic.guess_modality(node) if node and not self.controller.missing else None
        if guess:
            self.ui.modalityComboBox.setCurrentIndex(self.ui.modalityComboBox.findData(guess))
        self.ui.modalityGuessLabel.text = f"Guessed from the image: {guess}" if guess else ""

    def refreshModels(self):
        combo, current = self.ui.modelComboBox, self.ui.modelComboBox.currentData
        combo.blockSignals(True)
        combo.clear()
        for label, name in self.controller.model_entries():
            combo.addItem(label, name)
        combo.setCurrentIndex(max(0, combo.findData(current)))
        combo.blockSignals(False)
        self.controller.lists_changed = False
        self.refreshTargets()

    def _settingsKey(self):
        from HermesSegmentLib.slicer.panel import settings_key
        return settings_key(self.ui.modelComboBox.currentData, self.ui.modalityComboBox.currentData)

    def refreshTargets(self, _index=None):
        """Rebuild the checklist for the model and modality, restoring the remembered selection."""
        stored = qt.QSettings().value(self._settingsKey())
        groups, self.ui.modelInfoLabel.text = self.controller.target_checklist(
            self.ui.modelComboBox.currentData, self.ui.modalityComboBox.currentData, stored)
        tree = self.ui.targetTree
        tree.blockSignals(True)
        tree.clear()
        for region, targets in groups:
            group = qt.QTreeWidgetItem(tree, [region])
            group.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsAutoTristate)
            for key, name, checked in targets:
                item = qt.QTreeWidgetItem(group, [name])
                item.setData(0, qt.Qt.UserRole, key)
                item.setCheckState(0, qt.Qt.Checked if checked else qt.Qt.Unchecked)
            group.setExpanded(True)
        tree.blockSignals(False)
        self._showTargetCount(remember=False)
        self.showView()

    def targetItems(self):
        groups = [self.ui.targetTree.topLevelItem(g) for g in range(self.ui.targetTree.topLevelItemCount)]
        return [group.child(i) for group in groups for i in range(group.childCount())]

    def selectedTargets(self):
        return [item.data(0, qt.Qt.UserRole) for item in self.targetItems() if item.checkState(0) == qt.Qt.Checked]

    def checkAll(self, state):
        for item in (item for item in self.targetItems() if not item.isHidden()):
            item.setCheckState(0, state)

    def onSearch(self, text):
        text = text.lower()
        for item in self.targetItems():
            item.setHidden(text not in item.text(0).lower() and text not in item.data(0, qt.Qt.UserRole))

    def _showTargetCount(self, remember):
        from HermesSegmentLib.slicer.panel import stored_selection
        selected, items = self.selectedTargets(), self.targetItems()
        if remember and items:  # an empty list (model unreadable) never wipes the remembered selection
            qt.QSettings().setValue(self._settingsKey(), stored_selection(selected))
        self.ui.targetCountLabel.text = f"{len(selected)} of {len(items)} selected"

    def onAddModelFile(self):
        path = qt.QFileDialog.getOpenFileName(self.parent, "Add model", "",
                                              "Hermes model (*.safetensors);;Upstream Hermes-R checkpoint (*.pth)")
        with slicer.util.tryWithErrorDisplay("Could not add the model.", waitCursor=True):
            if path and self.controller.add_model_file(path) is not None:
                self.refreshModels()
        self.onPoll()
        self._timer.start(200)

    def onDownload(self):
        name = self.ui.modelComboBox.currentData
        self._modelAction("Could not download the model.", lambda models: models.download(name))

    def onRemoveModel(self):
        name = self.ui.modelComboBox.currentData
        if slicer.util.confirmYesNoDisplay(f"Delete model '{name}' from the model folder?"):
            self._modelAction("Could not remove the model.", lambda models: models.remove(name))

    def _modelAction(self, failure, action):
        with slicer.util.tryWithErrorDisplay(failure, waitCursor=True):
            from HermesSegmentLib import models
            action(models)
            self.refreshModels()

    def onOpenCacheFolder(self):
        from HermesSegmentLib.slicer.panel import models_folder
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(models_folder()))

    def onRunOnChanged(self, refresh=True):
        """This computer or a server: the server's fields, the device (the server's own), the model list."""
        from HermesSegmentLib.slicer.panel import RUN_ON, RUN_ON_KEY
        server = RUN_ON[self.ui.runOnComboBox.currentText]
        qt.QSettings().setValue(RUN_ON_KEY, self.ui.runOnComboBox.currentText)
        for name in ("serverUrlLabel", "serverUrlLineEdit", "serverTokenLabel", "serverTokenLineEdit",
                     "testConnectionButton", "serverInfoLabel"):
            getattr(self.ui, name).visible = server
        self.ui.deviceComboBox.enabled = not server
        self.controller.set_run_on(server)
        if refresh:
            self.refreshModels()

    def rememberServer(self):
        from HermesSegmentLib.slicer.panel import SERVER_TOKEN_KEY, SERVER_URL_KEY
        settings = qt.QSettings()
        settings.setValue(SERVER_URL_KEY, self.ui.serverUrlLineEdit.text.strip())
        settings.setValue(SERVER_TOKEN_KEY, self.ui.serverTokenLineEdit.text.strip())

    def onTestConnection(self):
        """The server's devices and models (at most 10 s); its models then fill the model list."""
        self.rememberServer()
        with slicer.util.tryWithErrorDisplay("Could not test the connection.", waitCursor=True):
            self.ui.serverInfoLabel.text = self.controller.test_connection(self.ui.serverUrlLineEdit.text.strip(),
                                                                          self.ui.serverTokenLineEdit.text.strip(),
                                                                          self.clientId)
            self.refreshModels()

    def onAdvancedToggled(self, collapsed):
        if not collapsed and not self.ui.deviceLabel.text:
            from HermesSegmentLib.slicer.install import describe_devices
            self.ui.deviceLabel.text = describe_devices()

    def onSegmentButton(self):
        """Start a background run with the inputs selected now, or cancel the one in progress."""
        from HermesSegmentLib.slicer.panel import HermesError, RunRequest, run_options
        if self.controller.busy:
            return self.controller.cancel()
        p = self._parameterNode
        assert p is not None, "the button is shown only while the module is entered, which connects a parameter node"
        options = run_options(p, preset=self.ui.presetComboBox.currentText, device=self.ui.deviceComboBox.currentData,
                              backend=self.ui.backendComboBox.currentData,
                              precision=self.ui.precisionComboBox.currentData)
        server = self.controller.on_server
        if server:
            self.rememberServer()
        try:
            self.ui.logTextEdit.clear()
            self.controller.start_run(RunRequest(p.inputVolume, p.outputSegmentation, self.ui.modelComboBox.currentData,
                                                 self.ui.modalityComboBox.currentData, self.selectedTargets(), options,
                                                 server=self.ui.serverUrlLineEdit.text.strip() if server else "",
                                                 token=self.ui.serverTokenLineEdit.text.strip() if server else "",
                                                 client_id=self.clientId))
            self.onPoll()
            self._timer.start(200)
        except (HermesError, OSError) as error:  # a user mistake or a full disk: one line, no traceback
            slicer.util.errorDisplay(f"Segmentation could not start: {error}")

    def onPoll(self):
        error = self.controller.poll()
        if self.controller.question:  # a long run ahead: the user decides
            self.controller.answer(slicer.util.confirmYesNoDisplay(self.controller.question))
        if not self.controller.busy:
            self._timer.stop()
            if (result := self.controller.take_result()) is not None and self._parameterNode is not None:
                self._parameterNode.outputSegmentation = result
            if self.controller.lists_changed:  # an install or a model import ended
                self.refreshModels()
        self.showView()
        if error:
            slicer.util.errorDisplay(error)


class HermesSegmentLogic(ScriptedLoadableModuleLogic):
    """The module's logic and the console API (see the help): the parameter node, and the MRML work of
    ``HermesSegmentLib.slicer.mrml_logic.MRMLLogic`` (no Qt; tested under slicer-core)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        from HermesSegmentLib.slicer.mrml_logic import MRMLLogic
        self.mrml = MRMLLogic()

    def getParameterNode(self):
        # parameterNodeWrapper adds __init__(parameterNode) at run time; mypy does not run class decorators
        return HermesSegmentParameterNode(super().getParameterNode())  # type: ignore[call-arg]

    def segment(self, volumeNode, modality, targets, **options):
        """Blocking: segment and return the segmentation node (options: ``MRMLLogic.segment``)."""
        return self.mrml.segment(volumeNode, modality, targets, **options)

    def import_file(self, path, volumeNode, segmentationNode=None, model_name=""):
        return self.mrml.import_file(path, volumeNode, segmentationNode, model_name)

    def owned_segments(self, segmentationNode):
        return self.mrml.owned_segments(segmentationNode)

    def guess_modality(self, volumeNode):
        return self.mrml.guess_modality(volumeNode)

    def available_models(self):
        return self.mrml.available_models()

    def targets_for(self, model, modality):
        return self.mrml.targets_for(model, modality)

    def target_groups(self, targetKeys):
        return self.mrml.target_groups(targetKeys)

    def volume_to_sitk(self, volumeNode):
        from HermesSegmentLib.slicer.mrml_logic import volume_to_sitk
        return volume_to_sitk(volumeNode)


class HermesSegmentTest(ScriptedLoadableModuleTest):
    """Segments the phantom sample with the demo model and checks the segments; the inference part is
    skipped, with a message, when the Python dependencies are missing (as on the extension build machines)."""

    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_segment_phantom()

    def test_segment_phantom(self):
        from HermesSegmentLib.pipeline.options import DEFAULT_MODEL
        from HermesSegmentLib.slicer import install, sample_data
        missing = install.find_missing()
        if missing:  # as on the extension build machines: the rest of the module still loads and opens
            self.delayDisplay(f"Inference test skipped: {missing.describe()}")
            return
        volume, logic = sample_data.load_phantom(), HermesSegmentLogic()
        targets = logic.targets_for(DEFAULT_MODEL, "CT")
        self.delayDisplay(f"Segmenting {len(targets)} targets with the demo model")
        segmentation = logic.segment(volume, "CT", targets, model=DEFAULT_MODEL)
        owned = logic.owned_segments(segmentation)
        self.assertEqual(set(owned), set(targets))
        for key, segmentId in owned.items():
            segment = segmentation.GetSegmentation().GetSegment(segmentId)
            self.assertTrue(segment.GetTag("TerminologyEntry", vtk.reference("")))
            self.assertTrue(slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segmentId, volume).any(), key)
