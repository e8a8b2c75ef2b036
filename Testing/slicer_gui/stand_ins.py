"""Stand-ins for the CTK and qMRML widgets the panel's .ui uses (Slicer's C++ widgets are not on PyPI).

Each has the class name, the properties, slots and signals the .ui file and the module use, with
the behaviour of the real widget that the tests rely on (named after it; nothing more):

- ``ctkCollapsibleButton``: a titled container; ``collapsed`` hides its contents and emits
  ``contentsCollapsed(bool)``.
- ``ctkSearchBox``: a line edit.
- ``qMRMLWidget``: ``setMRMLScene(scene)`` emits ``mrmlSceneChanged(vtkMRMLScene*)``.
- ``qMRMLNodeComboBox``: lists the scene's nodes of ``nodeTypes`` (kept up to date through scene
  observers), optional "None" entry, ``currentNode()``/``setCurrentNode()``, and emits
  ``currentNodeChanged(vtkMRMLNode*)`` also when the selected node is removed from the scene.
- ``ctkMessageBox``: a QMessageBox (``slicer.util.messageBox`` creates one).
"""

from __future__ import annotations

from PySide6 import QtCore, QtWidgets

from .pythonqt import pythonqt_class

Property, Signal, Slot = QtCore.Property, QtCore.Signal, QtCore.Slot


@pythonqt_class
class ctkCollapsibleButton(QtWidgets.QGroupBox):
    contentsCollapsed = Signal(bool)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._collapsed = False
        self.setCheckable(False)

    def _text(self):
        return self.title()

    def _setText(self, text):
        self.setTitle(text)

    def _isCollapsed(self):
        return self._collapsed

    def _setCollapsed(self, collapsed):
        if collapsed == self._collapsed:
            return
        self._collapsed = bool(collapsed)
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindChildOption.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)
        self.contentsCollapsed.emit(self._collapsed)

    def childEvent(self, event):
        super().childEvent(event)
        if event.added() and isinstance(event.child(), QtWidgets.QWidget):
            event.child().setVisible(not self._collapsed)

    text = Property(str, _text, _setText)
    collapsed = Property(bool, _isCollapsed, _setCollapsed)


@pythonqt_class
class ctkSearchBox(QtWidgets.QLineEdit):
    pass


@pythonqt_class
class ctkMessageBox(QtWidgets.QMessageBox):
    pass


@pythonqt_class
class qMRMLWidget(QtWidgets.QWidget):
    mrmlSceneChanged = Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def mrmlScene(self):
        return self._scene

    def setMRMLScene(self, scene):
        self._scene = scene
        self.mrmlSceneChanged.emit(scene)


@pythonqt_class
class qMRMLNodeComboBox(QtWidgets.QComboBox):
    currentNodeChanged = Signal(object)
    currentNodeIDChanged = Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene, self._observers, self._nodeTypes = None, [], []
        self._noneEnabled, self._noneDisplay = False, "None"
        self._flags = {"addEnabled": True, "removeEnabled": True, "renameEnabled": False, "showChildNodeTypes": True}
        self._current = None
        self.currentIndexChanged.connect(self._onIndexChanged)

    # properties the .ui sets
    def _getNodeTypes(self):
        return list(self._nodeTypes)

    def _setNodeTypes(self, types):
        self._nodeTypes = list(types)
        self._refresh()

    def _getNoneEnabled(self):
        return self._noneEnabled

    def _setNoneEnabled(self, enabled):
        self._noneEnabled = bool(enabled)
        self._refresh()

    def _getNoneDisplay(self):
        return self._noneDisplay

    def _setNoneDisplay(self, text):
        self._noneDisplay = text
        self._refresh()

    # a C++ type name, which PySide accepts and its stubs do not: the .ui sets a <stringlist>
    nodeTypes = Property("QStringList", _getNodeTypes, _setNodeTypes)  # type: ignore[arg-type]
    noneEnabled = Property(bool, _getNoneEnabled, _setNoneEnabled)
    noneDisplay = Property(str, _getNoneDisplay, _setNoneDisplay)
    addEnabled = Property(bool, lambda s: s._flags["addEnabled"], lambda s, v: s._flags.__setitem__("addEnabled", v))
    removeEnabled = Property(bool, lambda s: s._flags["removeEnabled"],
                             lambda s, v: s._flags.__setitem__("removeEnabled", v))
    renameEnabled = Property(bool, lambda s: s._flags["renameEnabled"],
                             lambda s, v: s._flags.__setitem__("renameEnabled", v))
    showChildNodeTypes = Property(bool, lambda s: s._flags["showChildNodeTypes"],
                                  lambda s, v: s._flags.__setitem__("showChildNodeTypes", v))

    # MRML
    def mrmlScene(self):
        return self._scene

    def setMRMLScene(self, scene):
        for observed, tag in self._observers:
            observed.RemoveObserver(tag)
        self._scene = scene
        self._observers = [] if scene is None else [
            (scene, scene.AddObserver(event, lambda *_: self._refresh()))
            for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent)
        ]
        self._refresh()

    def _nodes(self):
        if self._scene is None:
            return []
        nodes = []
        for index in range(self._scene.GetNumberOfNodes()):
            node = self._scene.GetNthNode(index)
            for nodeType in self._nodeTypes:
                exact = node.GetClassName() == nodeType
                if exact or (self._flags["showChildNodeTypes"] and node.IsA(nodeType)):
                    if not node.GetHideFromEditors():
                        nodes.append(node)
                    break
        return nodes

    def _refresh(self):
        nodes = self._nodes()
        blocked = self.blockSignals(True)
        self.clear()
        if self._noneEnabled:
            self.addItem(self._noneDisplay, None)
        for node in nodes:
            self.addItem(node.GetName(), node.GetID())
        wanted = self._current if self._current in nodes else None
        if wanted is None and not self._noneEnabled and nodes:
            wanted = nodes[0]
        self.setCurrentIndex(self.findData(wanted.GetID()) if wanted is not None else 0)
        self.blockSignals(blocked)
        self._setCurrent(wanted)

    def _onIndexChanged(self, index):
        nodeID = self.itemData(index) if index >= 0 else None
        self._setCurrent(self._scene.GetNodeByID(nodeID) if nodeID and self._scene else None)

    def _setCurrent(self, node):
        if node is self._current:
            return
        self._current = node
        self.currentNodeChanged.emit(node)
        self.currentNodeIDChanged.emit(node.GetID() if node is not None else "")

    @Slot(object)
    def setCurrentNode(self, node):
        index = self.findData(node.GetID()) if node is not None else (0 if self._noneEnabled else -1)
        if index >= 0:
            self.setCurrentIndex(index)
            self._onIndexChanged(index)

    def setCurrentNodeID(self, nodeID):
        # no scene: no node listed, so none found, as in Slicer
        self.setCurrentNode(self._scene.GetNodeByID(nodeID) if nodeID and self._scene is not None else None)

    def currentNode(self):
        return self._current

    def currentNodeID(self):
        return self._current.GetID() if self._current is not None else ""


CUSTOM_WIDGETS = [ctkCollapsibleButton, ctkSearchBox, qMRMLWidget, qMRMLNodeComboBox]
