"""HermesSegment (Hermes universal segmentation): thin Module, parameter node, Widget, Logic, Test;
the rest is ``HermesSegmentLib``, imported inside functions (loading never needs torch/numpy/SimpleITK)."""

import json
from pathlib import Path

import qt
import slicer
import vtk
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

DEVICES = {"Automatic": "auto", "GPU": "cuda", "CPU": "cpu"}

HELP = """Segment anatomical structures in CT, PET and MR with the Hermes universal model: pick the
input volume, its modality and the targets, then click <b>Segment</b>. A re-run replaces only the
segments this module created; your own segments are never modified.<br><br>
Python console (blocking, returns the segmentation node):<pre>
from HermesSegment import HermesSegmentLogic
seg = HermesSegmentLogic().segment(volumeNode, modality="CT", targets=["liver", "heart"], model="hermes-demo")</pre>
The bundled demo model is trained on synthetic phantoms: not for clinical use. <a href="https://github.com/HermesSegment/SlicerHermesSegment">Documentation</a>."""


class HermesSegment(ScriptedLoadableModule):
    """Module description; registers the phantom with Sample Data once Slicer has started."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Hermes Segment"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["HermesSegment contributors"]
        self.parent.helpText = HELP
        self.parent.acknowledgementText = "Hermes: context-prior learning for universal medical image segmentation."
        slicer.app.connect("startupCompleted()", _registerSampleData)


def _registerSampleData():
    from HermesSegmentLib.slicer import sample_data
    sample_data.register()


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
    minIslandMl: float = 0.5


class HermesSegmentWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The panel: inputs, grouped target checklist, models, options, and a cancellable background run."""

    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self._parameterNode = self._guiTag = self._run = self._resultPath = None
        self._timer = qt.QTimer()
        self._timer.connect("timeout()", self.onPoll)

    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HermesSegment.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = HermesSegmentLogic()
        from HermesSegmentLib import vocabulary
        from HermesSegmentLib.pipeline.options import PRESETS
        for modality in vocabulary.load_vocabulary().modalities:
            self.ui.modalityComboBox.addItem(modality.label, modality.key)
        self.ui.presetComboBox.addItems(list(PRESETS))
        self.ui.deviceComboBox.addItems(list(DEVICES))
        self.ui.modalityComboBox.connect("currentIndexChanged(int)", self.refreshTargets)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.refreshTargets)
        self.ui.inputVolumeSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onInputChanged)
        self.ui.targetSearchBox.connect("textChanged(QString)", self.onSearch)
        self.ui.targetTree.connect("itemChanged(QTreeWidgetItem*,int)", self.onTargetsChanged)
        self.ui.selectAllButton.connect("clicked()", lambda: self.checkAll(qt.Qt.Checked))
        self.ui.selectNoneButton.connect("clicked()", lambda: self.checkAll(qt.Qt.Unchecked))
        self.ui.addModelFileButton.connect("clicked()", self.onAddModelFile)
        self.ui.downloadModelButton.connect("clicked()", lambda: self._modelAction(
            "Could not download the model.", lambda models: models.download(self.ui.modelComboBox.currentData)))
        self.ui.openCacheFolderButton.connect("clicked()", self.onOpenCacheFolder)
        self.ui.removeModelButton.connect("clicked()", self.onRemoveModel)
        self.ui.advancedCollapsibleButton.connect("contentsCollapsed(bool)", self.onAdvancedToggled)
        self.ui.segmentButton.connect("clicked()", self.onSegmentButton)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.refreshModels()
        self.initializeParameterNode()

    def cleanup(self):
        self.cancel()
        self.removeObservers()
        self._timer.stop()

    def enter(self):
        self.initializeParameterNode()

    def exit(self):
        if self._parameterNode and self._guiTag:
            self._parameterNode.disconnectGui(self._guiTag)
        self._guiTag = None

    def onSceneStartClose(self, caller, event):
        self.cancel()  # closing the scene cancels a run
        self.exit()

    def initializeParameterNode(self):
        self.exit()
        self._parameterNode = self.logic.getParameterNode()
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        self._guiTag = self._parameterNode.connectGui(self.ui)

    def onInputChanged(self, node):
        guess = self.logic.guess_modality(node) if node else None
        if guess:
            self.ui.modalityComboBox.setCurrentIndex(self.ui.modalityComboBox.findData(guess))
        self.ui.modalityGuessLabel.text = f"Guessed from the image: {guess}" if guess else ""

    def refreshModels(self):
        self.ui.modelComboBox.clear()
        try:
            listings = [(m.title + ("" if m.available else " (not installed)"), m.name)
                        for m in self.logic.available_models()]
        except ImportError:  # dependencies are installed on the first Segment
            from HermesSegmentLib.pipeline.options import DEFAULT_MODEL
            listings = [("Hermes demo model", DEFAULT_MODEL)]
        for title, name in listings:
            self.ui.modelComboBox.addItem(title, name)
        self.refreshTargets()

    def _settingsKey(self):
        return f"HermesSegment/targets/{self.ui.modelComboBox.currentData}/{self.ui.modalityComboBox.currentData}"

    def refreshTargets(self, _index=None):
        """Rebuild the checklist for the model and modality, restoring the remembered selection."""
        tree = self.ui.targetTree
        tree.blockSignals(True)
        tree.clear()
        try:
            keys = self.logic.targets_for(self.ui.modelComboBox.currentData, self.ui.modalityComboBox.currentData)
            self.ui.modelInfoLabel.text = ""
        except Exception as error:  # model not installed, unreadable or missing dependencies: say why
            keys, self.ui.modelInfoLabel.text = [], str(error)
        remembered = set(json.loads(qt.QSettings().value(self._settingsKey(), "[]")))
        for region, targets in self.logic.target_groups(keys):
            group = qt.QTreeWidgetItem(tree, [region])
            group.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsUserCheckable | qt.Qt.ItemIsAutoTristate)
            for key, name in targets:
                item = qt.QTreeWidgetItem(group, [name])
                item.setData(0, qt.Qt.UserRole, key)
                item.setCheckState(0, qt.Qt.Checked if key in remembered else qt.Qt.Unchecked)
            group.setExpanded(True)
        tree.blockSignals(False)
        self.onTargetsChanged()

    def targetItems(self):
        groups = [self.ui.targetTree.topLevelItem(g) for g in range(self.ui.targetTree.topLevelItemCount)]
        return [group.child(i) for group in groups for i in range(group.childCount())]

    def selectedTargets(self):
        return [item.data(0, qt.Qt.UserRole) for item in self.targetItems() if item.checkState(0) == qt.Qt.Checked]

    def checkAll(self, state):
        for item in (item for item in self.targetItems() if not item.isHidden()):
            item.setCheckState(0, state)

    def onSearch(self, text):
        for item in self.targetItems():
            query = text.lower()
            item.setHidden(query not in item.text(0).lower() and query not in item.data(0, qt.Qt.UserRole))

    def onTargetsChanged(self, *_args):
        selected = self.selectedTargets()
        qt.QSettings().setValue(self._settingsKey(), json.dumps(selected))
        self.ui.targetCountLabel.text = f"{len(selected)} of {len(self.targetItems())} selected"

    def onAddModelFile(self):
        path = qt.QFileDialog.getOpenFileName(self.parent, "Add model package", "", "Hermes model (*.safetensors)")
        if path:
            self._modelAction("Could not add the model.", lambda models: models.add(path))

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
        from HermesSegmentLib import models
        models.user_models_dir().mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(models.user_models_dir())))

    def onAdvancedToggled(self, collapsed):
        if not collapsed and not self.ui.deviceLabel.text:
            from HermesSegmentLib.slicer.install import describe_devices
            self.ui.deviceLabel.text = describe_devices()

    def onSegmentButton(self):
        """Start a background run, or cancel the one in progress."""
        if self._run:
            return self.cancel()
        from HermesSegmentLib.slicer import background, install
        volume, targets = self._parameterNode.inputVolume, self.selectedTargets()
        if not volume or not targets:
            return slicer.util.errorDisplay("Select an input volume and at least one target.")
        with slicer.util.tryWithErrorDisplay("Segmentation could not start.", waitCursor=True):
            if install.ensure_dependencies(slicer.util.confirmYesNoDisplay):
                self._startRun(background, volume, targets)

    def _startRun(self, background, volume, targets):
        from HermesSegmentLib.pipeline.options import PRESETS, SegmentOptions
        from HermesSegmentLib.postprocess import PostprocessOptions
        p = self._parameterNode
        postprocess = PostprocessOptions(side_constraint=p.sideConstraint, single_piece=p.singlePiece,
                                         keep_largest=p.keepLargest, fill_holes=p.fillHoles,
                                         min_island_ml=p.minIslandMl if p.removeIslands else None)
        options = SegmentOptions(model=self.ui.modelComboBox.currentData,
                                 device=DEVICES[self.ui.deviceComboBox.currentText], postprocess=postprocess,
                                 **PRESETS[self.ui.presetComboBox.currentText])
        self._run, self._resultPath = background.start_segmentation(
            self.logic.volume_to_sitk(volume), Path(slicer.util.tempDirectory("HermesSegment")),
            modality=self.ui.modalityComboBox.currentData, targets=targets, options=options)
        self.ui.logTextEdit.clear()
        self.ui.segmentButton.text = "Cancel"
        self.ui.statusLabel.text = self._run.status_line()
        self._timer.start(200)

    def cancel(self):
        if self._run:
            self._run.cancel()

    def onPoll(self):
        from HermesSegmentLib.slicer.background import ProgressEvent
        for event in self._run.poll():
            if isinstance(event, ProgressEvent):
                self.ui.progressBar.value = int(100 * event.fraction)
                self.ui.statusLabel.text = self._run.status_line()
            else:
                self.ui.logTextEdit.appendPlainText(event.text)
        if not self._run.finished:
            return
        self._timer.stop()
        run, self._run = self._run, None
        self.ui.segmentButton.text = "Segment"
        self.ui.statusLabel.text = run.error() or f"Done in {run.elapsed():.0f} s."
        if run.succeeded:
            with slicer.util.tryWithErrorDisplay("Could not load the result.", waitCursor=True):
                self._parameterNode.outputSegmentation = self.logic.import_file(
                    self._resultPath, self._parameterNode.inputVolume, self._parameterNode.outputSegmentation,
                    model_name=self.ui.modelComboBox.currentData,
                )
        elif not run.cancelled:
            slicer.util.errorDisplay(f"Segmentation failed: {run.error()}", detailedText="\n".join(run.stderr_lines))


class HermesSegmentLogic(ScriptedLoadableModuleLogic):
    """The module's logic and the console API (see the help): the parameter node, and the MRML work of
    ``HermesSegmentLib.slicer.mrml_logic.MRMLLogic`` (no Qt; tested under slicer-core)."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        from HermesSegmentLib.slicer.mrml_logic import MRMLLogic
        self.mrml = MRMLLogic()

    def getParameterNode(self):
        return HermesSegmentParameterNode(super().getParameterNode())

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
    """Segments the phantom sample with the demo model and checks the segments."""

    def runTest(self):
        slicer.mrmlScene.Clear()
        self.test_segment_phantom()

    def test_segment_phantom(self):
        from HermesSegmentLib.pipeline.options import DEFAULT_MODEL
        from HermesSegmentLib.slicer import sample_data
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
