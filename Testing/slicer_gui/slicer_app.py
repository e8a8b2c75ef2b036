"""The GUI half of ``slicer`` for CI: slicer-core's real ``slicer`` module plus what only the Slicer
application provides (``slicer.app``, ``slicer.mrmlScene``, ``slicer.modules``, the scripted-module
base classes, the parameter-node wrapper), on PySide6 through :mod:`pythonqt`, offscreen.

Slicer's own ``slicer.util`` (shipped in slicer-core) is used as is: ``loadUI``,
``childWidgetVariables``, ``tryWithErrorDisplay``, ``confirmYesNoDisplay``, ``tempDirectory`` ... run
their real code on top of this.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

# slicer-core's ``slicer`` needs neither ``qt`` nor ``ctk`` at import: they are set up below, before
# anything asks for them.
import slicer
from PySide6 import QtCore, QtWidgets

from . import pythonqt, stand_ins

qt = pythonqt.build_qt_module()
sys.modules["qt"] = qt
qt.QUiLoader.custom_widgets = tuple(stand_ins.CUSTOM_WIDGETS)
ctk = types.ModuleType("ctk")
for _cls in (stand_ins.ctkCollapsibleButton, stand_ins.ctkSearchBox, stand_ins.ctkMessageBox):
    setattr(ctk, _cls.__name__, _cls)
sys.modules["ctk"] = ctk


@pythonqt.pythonqt_class
class qSlicerApplication(QtWidgets.QApplication):
    """``slicer.app``: the few members modules call."""

    startupCompleted = QtCore.Signal()

    def __init__(self, temporary_path: str):
        super().__init__(["HermesSegmentTests"])
        self.setApplicationName("Slicer")
        self._temporaryPath = temporary_path
        self._testing = False
        self._moduleManager = qSlicerModuleManager()
        self._mainWindow: QtWidgets.QMainWindow | None = None  # see install()

    temporaryPath = QtCore.Property(str, lambda self: self._temporaryPath)

    def testingEnabled(self):
        return self._testing

    def moduleManager(self):
        return self._moduleManager

    def userSettings(self):
        return qt.QSettings()

    def settings(self):
        return qt.QSettings()


@pythonqt.pythonqt_class
class qSlicerModuleManager(QtCore.QObject):
    moduleAboutToBeUnloaded = QtCore.Signal(str)


class qSlicerScriptedLoadableModuleWidget(stand_ins.qMRMLWidget):
    """The panel a scripted module's widget fills: a qMRMLWidget that knows whether the module is entered."""

    isEntered = False


class ModulePanel:
    """What Slicer does with a scripted module: module object, widget in its panel, enter and exit.

    ``panel.widget`` is the module's ``<Name>Widget``; ``panel.parent`` the panel it fills
    (``qSlicerScriptedLoadableModuleWidget`` in Slicer, whose ``isEntered`` the template reads).
    """

    def __init__(self, module_file: Path):
        import importlib.util

        name = module_file.stem
        sys.path.insert(0, str(module_file.parent))
        spec = importlib.util.spec_from_file_location(name, module_file)
        if spec is None or spec.loader is None:
            raise ImportError(f"{module_file} cannot be imported as a Python module")
        self.python_module = importlib.util.module_from_spec(spec)
        sys.modules[name] = self.python_module
        spec.loader.exec_module(self.python_module)
        self.module_parent = types.SimpleNamespace(path=str(module_file))
        setattr(slicer.modules, name.lower(), types.SimpleNamespace(path=str(module_file)))
        self.module = getattr(self.python_module, name)(self.module_parent)
        self.parent = qSlicerScriptedLoadableModuleWidget()
        self.parent.setLayout(qt.QVBoxLayout())
        self.parent.setMRMLScene(slicer.mrmlScene)
        self.parent.isEntered = False
        self.widget = getattr(self.python_module, name + "Widget")(self.parent)
        self.widget.setup()
        self.parent.resize(440, 1000)

    def enter(self):
        self.parent.isEntered = True
        self.widget.enter()

    def exit(self):
        self.widget.exit()
        self.parent.isEntered = False

    def grab(self, path: Path) -> Path:
        self.parent.show()
        qt.QApplication.processEvents()
        self.parent.grab().save(str(path))
        return path


def install(home: Path) -> qSlicerApplication:
    """Make ``import qt, ctk, slicer`` look like Slicer's Python; returns ``slicer.app``."""
    app = qt.QApplication.instance() or qSlicerApplication(str(home / "temp"))
    app._temporaryPath = str(home / "temp")
    # PythonQt's string-signature disconnect, which pythonqt_class adds and PySide's stubs do not know
    app.disconnect("startupCompleted()")  # type: ignore[call-overload]  # modules of earlier tests connected to the application's startup
    qt.QSettings.setDefaultFormat(qt.QSettings.IniFormat)
    qt.QSettings.setPath(qt.QSettings.IniFormat, qt.QSettings.UserScope, str(home / "settings"))
    slicer.app = app
    if not any(w.objectName == "qSlicerMainWindow" for w in app.topLevelWidgets()):
        main_window = qt.QMainWindow()  # slicer.util.mainWindow() finds it by name; message boxes need it
        main_window.objectName = "qSlicerMainWindow"
        app._mainWindow = main_window
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()  # the real logic (slicer-core)
    slicer.modules = types.SimpleNamespace(terminologies=types.SimpleNamespace(logic=lambda: terminologies))
    slicer.qMRMLWidget = stand_ins.qMRMLWidget
    slicer.qMRMLNodeComboBox = stand_ins.qMRMLNodeComboBox
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
    from . import parameter_node_wrapper

    sys.modules["slicer.parameterNodeWrapper"] = parameter_node_wrapper
    slicer.parameterNodeWrapper = parameter_node_wrapper
    from . import sample_data, scripted_loadable_module

    sys.modules["SampleData"] = sample_data.module()
    sys.modules["slicer.ScriptedLoadableModule"] = scripted_loadable_module.module()
    slicer.ScriptedLoadableModule = sys.modules["slicer.ScriptedLoadableModule"]
    return app
