"""Run the Slicer module's widget code for real in CI: PySide6 (offscreen) behind PythonQt's idioms,
stand-ins for the few CTK/qMRML widgets, slicer-core's real ``slicer`` (MRML and ``slicer.util``) plus
the GUI-only parts of ``slicer`` the application provides. See ``slicer_app.install``."""
