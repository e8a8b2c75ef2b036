"""Inside 3D Slicer: the MRML logic (volume nodes in, segmentation nodes out), the background process the
panel runs, dependency installation and the sample data. No Qt is imported here.

- ``mrml_logic.py``: volume node -> SimpleITK image, masks -> segments (runs under ``slicer-core`` too)
- ``background.py``: ``hermes-segment segment`` in a child process, progress and cancel
- ``install.py``: Python dependencies installed on first use, after asking
- ``sample_data.py``: the phantom and the bundled real scans registered with Sample Data

This subpackage is ``HermesSegmentLib.slicer``; ``import slicer`` in its files is an absolute import and
always means Slicer's own module (Slicer puts the module folder, not ``HermesSegmentLib/``, on sys.path).
"""
