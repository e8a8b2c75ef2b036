"""Render the Slicer panel in its states (idle, running, done) to PNGs, offscreen, with the real widget
code through Testing/slicer_gui (PySide6 + stand-ins for the CTK/qMRML widgets; look, not pixels of Slicer).

    python tools/render_panel.py OUT_DIR        # writes panel-idle.png, panel-running.png, panel-done.png
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "Testing"), str(REPO / "HermesSegment")]


def main(out: Path) -> None:
    home = Path(tempfile.mkdtemp(prefix="hermes-panel-"))
    os.environ["HERMES_SEGMENT_HOME"] = str(home / "home")
    from slicer_gui import slicer_app

    slicer_app.install(home)
    import qt
    import slicer

    from test_slicer_panel import add_ct

    panel = slicer_app.ModulePanel(REPO / "HermesSegment" / "HermesSegment.py")
    panel.enter()
    ui = panel.widget.ui
    volume = add_ct("Phantom CT", shape=(40, 64, 64))
    ui.inputVolumeSelector.setCurrentNode(volume)
    for item in panel.widget.targetItems()[:3]:
        item.setCheckState(0, qt.Qt.Checked)
    out.mkdir(parents=True, exist_ok=True)
    panel.grab(out / "panel-idle.png")
    ui.segmentButton.click()
    while panel.widget.controller.busy and ui.progressBar.value < 20:
        qt.QApplication.processEvents()
        time.sleep(0.05)
    panel.grab(out / "panel-running.png")
    while panel.widget.controller.busy:
        qt.QApplication.processEvents()
        time.sleep(0.05)
    panel.grab(out / "panel-done.png")
    panel.exit()
    panel.widget.cleanup()
    slicer.mrmlScene.Clear(1)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
