"""PythonQt idioms on a PySide6 binding, so that Slicer widget code runs unchanged in CI (offscreen).

Slicer embeds Qt through PythonQt, whose Python face differs from PySide6's in a few ways that
scripted modules rely on. This module builds a ``qt`` module from PySide6 with those idioms:

- Qt properties read and written as attributes: ``label.text = "x"``, ``combo.currentData``,
  ``checkBox.checked`` (PythonQt gives a property precedence over a method of the same name);
- string-signature connections: ``button.connect("clicked()", slot)`` /
  ``disconnect("clicked()", slot)``, the signal chosen by its name;
- ``obj.name`` is the object name (Slicer's ``slicer.util.childWidgetVariables`` reads it);
- ``QFileDialog.getOpenFileName`` returns the path only (PythonQt), not PySide's (path, filter);
- ``qt.QUiLoader`` creates the registered stand-ins for Slicer's custom widgets (see
  :mod:`stand_ins`) and makes the ``.ui`` file's ``<connections>`` through the idioms above.
"""

from __future__ import annotations

import types
import xml.etree.ElementTree as ET
from typing import TypeVar

from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets

_ORIGINAL_GETATTRIBUTE: dict = {}
_QObjectClass = TypeVar("_QObjectClass", bound=type[QtCore.QObject])


def _getattribute(obj, name):
    """PySide's own attribute lookup for ``obj`` (classes with static/instance overloads have their own)."""
    for klass in type(obj).__mro__:
        original = _ORIGINAL_GETATTRIBUTE.get(klass)
        if original is not None:
            return original(obj, name)
    return object.__getattribute__(obj, name)


def _qt_property(obj, name):
    if name in ("name", "objectName"):
        name = "objectName"
    meta = QtCore.QObject.metaObject(obj)
    index = meta.indexOfProperty(name)
    return meta.property(index) if index >= 0 else None


def _pythonqt_getattribute(self, name):
    if name == "connect":
        return types.MethodType(_pythonqt_connect, self)
    if name == "disconnect":
        return types.MethodType(_pythonqt_disconnect, self)
    if name[0] != "_":
        prop = _qt_property(self, name)
        if prop is not None:
            return prop.read(self)
    return _getattribute(self, name)


def _pythonqt_setattr(self, name, value):
    if name[0] != "_":
        prop = _qt_property(self, name)
        if prop is not None and prop.isWritable():
            if not prop.write(self, value):
                raise TypeError(f"cannot set Qt property '{name}' of {type(self).__name__} to {value!r}")
            return
    for klass in type(self).__mro__:
        descriptor = klass.__dict__.get(name)
        if descriptor is not None and hasattr(type(descriptor), "__set__"):
            descriptor.__set__(self, value)
            return
    _getattribute(self, "__dict__")[name] = value


def _signal(obj, signature):
    name = signature.split("(", 1)[0].strip()
    signal = _getattribute(obj, name)
    if not isinstance(signal, QtCore.SignalInstance):
        raise TypeError(f"{type(obj).__name__}.{name} is not a signal ('{signature}')")
    return signal


def _pythonqt_connect(self, signature, slot=None, *more):
    if isinstance(self, QtCore.QObject) and isinstance(signature, str) and slot is not None and not more:
        return bool(_signal(self, signature).connect(slot))
    return _pyside_connect(self, signature, slot, *more)


def _pythonqt_disconnect(self, signature=None, slot=None, *more):
    if isinstance(self, QtCore.QObject) and isinstance(signature, str):
        try:
            signal = _signal(self, signature)
            return bool(signal.disconnect(slot) if slot is not None else signal.disconnect())
        except (RuntimeError, TypeError):
            return False
    return _pyside_disconnect(self, signature, slot, *more)


_pyside_connect = QtCore.QObject.connect
_pyside_disconnect = QtCore.QObject.disconnect


def _qobject_classes(*modules):
    for module in modules:
        for value in (getattr(module, name) for name in dir(module)):
            if isinstance(value, type) and issubclass(value, QtCore.QObject):
                yield value


def pythonqt_class(cls: _QObjectClass) -> _QObjectClass:
    """Give a QObject class (PySide's or a stand-in) PythonQt's attribute semantics."""
    if "__getattribute__" in cls.__dict__ and cls not in _ORIGINAL_GETATTRIBUTE:
        _ORIGINAL_GETATTRIBUTE[cls] = cls.__dict__["__getattribute__"]
    # Replacing PySide's methods by PythonQt's, whose signatures differ, is the point of this module.
    cls.__getattribute__ = _pythonqt_getattribute  # type: ignore[method-assign]
    cls.__setattr__ = _pythonqt_setattr  # type: ignore[method-assign]
    cls.connect = _pythonqt_connect  # type: ignore[method-assign]
    cls.disconnect = _pythonqt_disconnect  # type: ignore[method-assign]
    return cls


_pyside_getOpenFileName = QtWidgets.QFileDialog.getOpenFileName


def _getOpenFileName(parent=None, caption="", directory="", filter="", *args):
    return _pyside_getOpenFileName(parent, caption, directory, filter, *args)[0]


class QUiLoader:
    """``qt.QUiLoader`` that knows Slicer's custom widgets (stand-ins) and makes the .ui's connections."""

    custom_widgets: tuple = ()

    def __init__(self, parent=None):
        self._loader = QtUiTools.QUiLoader(parent)
        for cls in self.custom_widgets:
            self._loader.registerCustomWidget(cls)

    def load(self, device, parentWidget=None):
        xml = bytes(device.readAll()).decode("utf-8")
        device.seek(0)
        widget = self._loader.load(device, parentWidget)
        if widget is not None:
            _make_ui_connections(widget, xml)
        return widget


def _make_ui_connections(root, xml):
    """Qt's form builder connects by C++ signature; stand-ins declare Python signals, so connect by name."""
    tree = ET.fromstring(xml)
    by_name = {w.objectName: w for w in root.findChildren(QtCore.QObject)}
    by_name[root.objectName] = root
    for connection in tree.iter("connection"):
        sender, signal, receiver, slot = (connection.findtext(tag) for tag in ("sender", "signal", "receiver", "slot"))
        if not (sender and signal and receiver and slot):
            raise ValueError(f"a <connection> of the .ui lacks its sender, signal, receiver or slot: "
                             f"{ET.tostring(connection, encoding='unicode')}")
        _signal(by_name[sender], signal).connect(getattr(by_name[receiver], slot.split("(", 1)[0]))


def build_qt_module() -> types.ModuleType:
    """The ``qt`` module as Slicer's Python sees it (PySide6 underneath)."""
    for cls in _qobject_classes(QtCore, QtGui, QtWidgets, QtUiTools):
        pythonqt_class(cls)
    QtWidgets.QFileDialog.getOpenFileName = staticmethod(_getOpenFileName)  # type: ignore[method-assign,assignment]
    qt = types.ModuleType("qt", __doc__)
    for module in (QtCore, QtGui, QtWidgets, QtUiTools):
        qt.__dict__.update({name: getattr(module, name) for name in dir(module) if not name.startswith("_")})
    qt.__dict__["QUiLoader"] = QUiLoader  # ours over QtUiTools'
    return qt
