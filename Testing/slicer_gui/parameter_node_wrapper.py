"""Stand-in for ``slicer.parameterNodeWrapper`` (Base/Python/slicer/parameterNodeWrapper in Slicer).

Slicer's wrapper is pure Python but ships only inside Slicer, so this is an independent
implementation of the part of its documented API the module uses, with the behaviours a widget must
cope with in the released versions (read in Slicer's own source at v5.6.2, v5.8.1, v5.10.0 and main:
``Base/Python/slicer/parameterNodeWrapper/wrapper.py`` and ``guiConnectors.py``):

- ``@parameterNodeWrapper`` on a class of annotated fields: ``bool``, ``int``, ``float``, ``str`` and
  MRML node classes; ``Annotated[float, WithinRange(lo, hi), Decimals(n)]``; defaults by ``=``;
- values live in the wrapped ``vtkMRMLScriptedModuleNode`` (parameters and node references);
- ``connectParametersToGui(mapping)`` returns a tag counting from 0; ``connectGui(gui)`` finds the
  widgets by their ``SlicerParameterName`` property and returns ``None`` in Slicer 5.6-5.10
  (Slicer issue #7547, PR #8667) -- choose with :data:`CONNECT_GUI_RETURNS_TAG`;
- a float field without a range sets a ``QDoubleSpinBox`` to -inf..inf, as Slicer's connector does; an
  int field sets a ``QSpinBox`` to its ``WithinRange`` (``setRange``), else to the whole int range;
- ``disconnectGui(tag)`` drops the widget connections of that tag.
"""

from __future__ import annotations

import dataclasses
import typing

import qt
import slicer
import vtk

SlicerParameterNamePropertyName = "SlicerParameterName"
#: False reproduces Slicer <= 5.10, whose ``connectGui`` returns None (the tag is lost).
CONNECT_GUI_RETURNS_TAG = True


@dataclasses.dataclass
class WithinRange:
    minimum: float
    maximum: float


@dataclasses.dataclass
class Decimals:
    value: int


@dataclasses.dataclass
class Default:
    value: typing.Any


def _split(annotation):
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        return base, extras
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0], []
    return annotation, []


def _is_node_type(base):
    return isinstance(base, type) and issubclass(base, slicer.vtkMRMLNode)


class _Field:
    def __init__(self, name, annotation, default):
        self.name = name
        self.base, self.extras = _split(annotation)
        self.default = default

    def extra(self, kind):
        return next((e for e in self.extras if isinstance(e, kind)), None)

    def read(self, node):
        if _is_node_type(self.base):
            return node.GetNodeReference(self.name)
        text = node.GetParameter(self.name)
        if self.base is bool:
            return text == "True"
        return self.base(text)

    def write(self, node, value):
        if _is_node_type(self.base):
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
            return
        value = self.base(value)
        limits = self.extra(WithinRange)
        if limits is not None and not limits.minimum <= value <= limits.maximum:
            raise ValueError(f"{self.name}={value} is outside {limits.minimum}..{limits.maximum}")
        node.SetParameter(self.name, str(value))


class _Connector:
    """One widget <-> one field."""

    def __init__(self, wrapper, field, widget):
        self.wrapper, self.field, self.widget = wrapper, field, widget
        if isinstance(widget, qt.QCheckBox):
            self.signal, self.get, self.set = ("stateChanged(int)", lambda: widget.checked,
                                               lambda v: setattr(widget, "checked", v))
        elif isinstance(widget, qt.QDoubleSpinBox):
            limits, decimals = field.extra(WithinRange), field.extra(Decimals)
            if decimals is not None:
                widget.decimals = decimals.value
            widget.minimum = limits.minimum if limits else float("-inf")
            widget.maximum = limits.maximum if limits else float("inf")
            self.signal, self.get, self.set = ("valueChanged(double)", lambda: widget.value,
                                               lambda v: setattr(widget, "value", v))
        elif isinstance(widget, qt.QSpinBox) and field.base is int:
            limits = field.extra(WithinRange)  # Slicer: setRange, else the whole int range
            widget.setRange(*((limits.minimum, limits.maximum) if limits else (-2**31, 2**31 - 1)))
            self.signal, self.get, self.set = ("valueChanged(int)", lambda: widget.value,
                                               lambda v: setattr(widget, "value", v))
        elif _is_node_type(field.base) and hasattr(widget, "currentNode"):
            self.signal, self.get, self.set = ("currentNodeChanged(vtkMRMLNode*)", widget.currentNode,
                                               widget.setCurrentNode)
        else:
            raise RuntimeError(f"no GUI connector for {field.name} ({field.base}) and {type(widget).__name__}")

    def connect(self):
        self.widget.connect(self.signal, self.changed)

    def disconnect(self):
        self.widget.disconnect(self.signal, self.changed)

    def changed(self, *_):
        if not self.wrapper._updatingGui:
            setattr(self.wrapper, self.field.name, self.get())

    def update(self):
        self.set(getattr(self.wrapper, self.field.name))


def _parameter_property(field: _Field) -> property:
    """The attribute of a wrapped class that reads ``field`` from its parameter node and writes it there."""
    return property(lambda self: field.read(self.parameterNode),
                    lambda self, value: field.write(self.parameterNode, value))


def _fields(cls) -> dict[str, _Field]:
    """The class's annotated parameters, each turned into a property read from and written to the
    parameter node."""
    fields: dict[str, _Field] = {}
    for name, annotation in typing.get_type_hints(cls, include_extras=True).items():
        default = getattr(cls, name, None)
        base, extras = _split(annotation)
        marked = next((e for e in extras if isinstance(e, Default)), None)
        if marked is not None:
            default = marked.value
        elif default is None and not _is_node_type(base):
            default = base()
        fields[name] = _Field(name, annotation, default)
        setattr(cls, name, _parameter_property(fields[name]))
    return fields


class _WrapperMembers:
    """The members ``parameterNodeWrapper`` gives the class it decorates."""

    allParameters: dict[str, _Field]  # set on the decorated class by parameterNodeWrapper

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        self._guis, self._nextTag, self._updatingGui = {}, 0, False
        for field in self.allParameters.values():
            if not _is_node_type(field.base) and not parameterNode.GetParameter(field.name):
                field.write(parameterNode, field.default)

    def connectParametersToGui(self, mapping):
        connectors = [_Connector(self, self.allParameters[name], widget) for name, widget in mapping.items()]
        tag, self._nextTag = self._nextTag, self._nextTag + 1
        self._guis[tag] = connectors
        for connector in connectors:
            connector.update()
            connector.connect()
        self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda *_: self._updateGui())
        return tag

    def connectGui(self, gui):
        widgets = gui.findChildren(qt.QWidget) if hasattr(gui, "findChildren") else list(vars(gui).values())
        mapping = {_parameterName(w): w for w in widgets if _parameterName(w)}
        tag = self.connectParametersToGui(mapping)
        return tag if CONNECT_GUI_RETURNS_TAG else None

    def disconnectGui(self, tag):
        for connector in self._guis.pop(tag, []):
            connector.disconnect()

    def _updateGui(self):
        if self._updatingGui:
            return
        self._updatingGui = True
        try:
            for connectors in self._guis.values():
                for connector in connectors:
                    connector.update()
        finally:
            self._updatingGui = False

    def StartModify(self):
        return self.parameterNode.StartModify()

    def EndModify(self, was):
        return self.parameterNode.EndModify(was)

    def AddObserver(self, event, callback, priority=0.0):
        return self.parameterNode.AddObserver(event, callback, priority)

    def RemoveObserver(self, tag):
        return self.parameterNode.RemoveObserver(tag)


def parameterNodeWrapper(cls):
    cls.allParameters = _fields(cls)
    for name, member in vars(_WrapperMembers).items():
        if callable(member):
            setattr(cls, name, member)
    return cls


def _parameterName(widget):
    """The widget's ``SlicerParameterName`` dynamic property, or None. Asked only of widgets that have
    it: PySide6 6.12's ``QObject.property()`` of a missing property returns None one reference short,
    and enough such calls abort the interpreter ("none_dealloc")."""
    names = {bytes(name).decode() for name in widget.dynamicPropertyNames()}
    return widget.property(SlicerParameterNamePropertyName) if SlicerParameterNamePropertyName in names else None


def findChildWidgetForParameter(widget, parameter):
    for child in widget.findChildren(qt.QWidget):
        if _parameterName(child) == parameter:
            return child
    return None
