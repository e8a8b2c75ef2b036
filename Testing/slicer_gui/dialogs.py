"""Slicer's message boxes without a person: ``slicer.util.messageBox`` (the one place where
``errorDisplay``, ``confirmYesNoDisplay``, ``warningDisplay``, ... open a modal box) records the
message and returns the answer the test queued (default: No for questions, Ok otherwise).
Exceptions raised in Qt slots (which PySide prints and swallows) are recorded too."""

from __future__ import annotations

import sys
import traceback

import slicer

from .slicer_app import qt  # builds the qt module first


class Dialogs:
    def __init__(self):
        self.shown: list[tuple[str, dict]] = []
        self.answers: list = []
        self.slot_errors: list[BaseException] = []

    def messageBox(self, text, parent=None, **kwargs):
        self.shown.append((text, kwargs))
        if self.answers:
            return self.answers.pop(0)
        question = kwargs.get("icon") == qt.QMessageBox.Question
        return qt.QMessageBox.No if question else qt.QMessageBox.Ok

    def texts(self) -> list[str]:
        return [text for text, _ in self.shown]

    def excepthook(self, kind, error, tb):
        self.slot_errors.append(error)
        traceback.print_exception(kind, error, tb)

    def install(self):
        slicer.util.messageBox = self.messageBox
        sys.excepthook = self.excepthook
        return self
