"""Stand-in for Slicer's ``SampleData`` module (Modules/Scripted/SampleData/SampleData.py): the part an
extension calls, ``SampleDataLogic.registerCustomSampleDataSource``, with the argument checks of
Slicer's ``SampleDataSource`` (a str becomes a one-item list; uris, fileNames and nodeNames must have
the same length, so ``uris=None`` raises TypeError as in Slicer 5.6.2 to main)."""

from __future__ import annotations

import types

import slicer


class SampleDataSource:
    def __init__(self, sampleName=None, uris=None, fileNames=None, nodeNames=None, checksums=None,
                 customDownloader=None, thumbnailFileName=None, loadFileTypes=None, loadFiles=None,
                 loadFileProperties=None):
        if isinstance(uris, str):
            uris, fileNames, nodeNames = [uris], [fileNames], [nodeNames]
            checksums, loadFileTypes = [checksums], [loadFileTypes]
        elif isinstance(uris, (list, tuple)):
            checksums = checksums if checksums is not None else [None] * len(uris)
            loadFileTypes = loadFileTypes if loadFileTypes is not None else [None] * len(uris)
        if not len(uris) == len(fileNames) == len(nodeNames) == len(checksums) == len(loadFileTypes):
            raise ValueError("All fields of sample data source must have the same length")
        self.sampleName, self.uris, self.fileNames, self.nodeNames = sampleName, uris, fileNames, nodeNames
        self.checksums, self.loadFileTypes, self.customDownloader = checksums, loadFileTypes, customDownloader
        self.thumbnailFileName = thumbnailFileName


class SampleDataLogic:
    # Slicer's own signature, keyword for keyword, so that a call the real SampleData would refuse fails here too.
    @staticmethod
    def registerCustomSampleDataSource(category="Custom", sampleName=None, uris=None, fileNames=None,  # noqa: PLR0913
                                       nodeNames=None, customDownloader=None, thumbnailFileName=None,
                                       loadFileTypes=None, loadFiles=None, loadFileProperties=None,
                                       checksums=None, loadFileType=None):
        source = SampleDataSource(sampleName, uris, fileNames, nodeNames, checksums, customDownloader,
                                  thumbnailFileName, loadFileTypes or loadFileType, loadFiles, loadFileProperties)
        sources = getattr(slicer.modules, "sampleDataSources", None)
        if sources is None:
            sources = slicer.modules.sampleDataSources = {}
        sources.setdefault(category, []).append(source)
        return source


def module() -> types.ModuleType:
    stand_in = types.ModuleType("SampleData", __doc__)
    for cls in (SampleDataLogic, SampleDataSource):
        setattr(stand_in, cls.__name__, cls)
    return stand_in
