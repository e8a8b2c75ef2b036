"""A batch of cases in one output folder: which files are cases, which name each case gets, which
cases are done, and outputs that never replace an input or a file we did not write.

- **Our files are marked** (:data:`writers.MARK`). :func:`find_cases` never takes a marked file for
  a case, and no output is ever written over a file that is an input of the batch or that is not
  marked (a manual segmentation, a BIDS sidecar).
- **A case is done when its record says so.** ``CASE.hermes-segment.json`` is written last, after all
  of the case's files are in place, and names the input it was made from (path, size, modification
  time; for a DICOM folder, a digest of its files) and the request (model, targets, format, ...). A
  case is done only when its record names this very input and this request and its files exist; an
  interrupted case has no record and is done again. Names are kept across runs: an input whose
  record is found under ``ct_2`` gets ``ct_2`` again.
- **A case's files appear together.** They are written into a hidden staging folder in the output
  folder and moved into place when all are complete (:func:`case_files`).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from .atomic import write_text
from .errors import HermesError
from .image_files import image_header
from .read import IMAGE_SUFFIXES, case_name
from .writers import MARK

log = logging.getLogger(__name__)

RECORD_SUFFIX = ".hermes-segment.json"


def is_ours(path: Path) -> bool:
    """True for a file this tool wrote (see the module docstring)."""
    if path.name.lower().endswith(".json"):
        try:
            return json.loads(path.read_text(encoding="utf-8")).get("written_by", "").startswith(MARK)
        except (OSError, ValueError, AttributeError):
            return False
    reader = image_header(path)
    if reader is None:
        return False
    for key in ("ITK_FileNotes", "descrip"):
        if reader.HasMetaDataKey(key) and reader.GetMetaData(key).strip().startswith(MARK):
            return True
    return False


def find_cases(inputs: Sequence[str]) -> list[Path]:
    """Files, globs, folders of images, or folders that hold a DICOM series (one case each).

    Files this tool wrote are left out, with a warning; when nothing else is left, or a path does not
    exist, the batch is a mistake (:class:`HermesError`, before any case is read). A folder that
    holds image files and DICOM files gives its image files, with a warning that its DICOM files are
    left out.
    """
    cases: list[Path] = []
    ours: list[Path] = []
    for item in inputs:
        matches = [Path(p) for p in sorted(glob.glob(item))] if glob.has_magic(item) else [Path(item)]
        if not matches:
            raise HermesError(f"no file matches {item!r}")
        if not matches[0].exists():  # a mistyped path: the whole batch's mistake, found before any case is read
            raise HermesError(f"{item}: no such file or folder; check the path")
        for path in matches:
            if path.is_dir():
                images = [p for p in sorted(path.iterdir())
                          if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(IMAGE_SUFFIXES)]
                mine = [p for p in images if is_ours(p)]
                ours += mine
                images = [p for p in images if p not in mine]
                dicom = _a_dicom_file(path) if images else None
                if dicom is not None:
                    log.warning("%s holds image files and DICOM files (%s, ...): only the image files are segmented; "
                                "to segment the DICOM series, move its files into a folder of their own and give that "
                                "folder", path, dicom.name)
                cases.extend(images or ([] if mine else [path]))  # no image files: a DICOM series folder
            elif path.is_file() and is_ours(path):
                ours.append(path)
            else:
                cases.append(path)
    if ours:
        if not cases:
            raise HermesError(f"no image to segment: the {len(ours)} file(s) given ({ours[0].name}, ...) were written "
                              "by hermes-segment; give the original scans")
        log.warning("left out %d file(s) written by hermes-segment (%s%s)", len(ours), ours[0].name,
                    ", ..." if len(ours) > 1 else "")
    return cases


def _a_dicom_file(folder: Path) -> Optional[Path]:
    """The first DICOM file (the 'DICM' marker) of ``folder``, or None."""
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(".") and not path.name.lower().endswith(IMAGE_SUFFIXES):
            with contextlib.suppress(OSError), open(path, "rb") as stream:
                if stream.read(132)[128:132] == b"DICM":
                    return path
    return None


def prepare_out_dir(out: Path) -> None:
    """Create ``out`` and make sure files can be written there, before any case is read."""
    if out.exists() and not out.is_dir():
        raise HermesError(f"--out {out} is a file; give a folder (it is created if needed)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise HermesError(f"--out {out}: cannot create the folder ({error.strerror or error}); "
                          "choose a folder you can write to") from None
    probe = out / f".partial-{uuid.uuid4().hex[:8]}-write-test"
    try:
        probe.write_bytes(b"hermes-segment")
        probe.unlink()
    except OSError as error:
        with contextlib.suppress(OSError):
            probe.unlink()
        raise HermesError(f"--out {out}: cannot write files there ({error.strerror or error}); "
                          "choose a folder you can write to") from None


def input_identity(path: Path) -> dict:
    """What makes this input this input: its absolute path, and its size and modification time
    (for a folder, a digest of its files' names, sizes and times)."""
    path = path.resolve()
    if path.is_dir():
        digest = hashlib.sha256()
        for child in sorted(path.iterdir()):
            if child.is_file():
                stat = child.stat()
                digest.update(f"{child.name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        return {"path": str(path), "files_sha256": digest.hexdigest()}
    stat = path.stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _input_files(path: Path) -> set[tuple[int, int]]:
    """(device, inode) of every file the input is made of."""
    files = [p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path]
    return {(s.st_dev, s.st_ino) for s in (f.stat() for f in files)}


@dataclass
class Case:
    """One input of the batch: its name in the output folder and whether it is already done."""

    path: Path
    name: str
    identity: dict
    done: bool


def _records(out: Path) -> dict[str, dict]:
    records = {}
    for path in out.glob(f"*{RECORD_SUFFIX}"):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("written_by", "").startswith(MARK):
            records[path.name[: -len(RECORD_SUFFIX)]] = record
    return records


def plan(paths: Sequence[Path], out: Path, outputs: Callable[[str], list[str]], *,
         overwrite: bool = False, request: Optional[dict] = None) -> list[Case]:
    """Name every case and tell which are done; refuse, before any work, a batch that would write
    over one of its inputs or over a file this tool did not write.

    ``outputs(name)``: the file names a case called ``name`` writes in ``out``. ``request``: what
    is asked (model, targets, format, ...); a case made for another request is not done (one made
    for more targets than asked is).
    """
    records = _records(out)
    inputs = set().union(*(_input_files(p) for p in paths if p.exists())) if paths else set()
    taken: set[str] = set()
    cases = []
    for path in paths:
        identity = input_identity(path) if path.exists() else {"path": str(path.resolve())}
        base, number = case_name(path), 1
        while True:
            name = base if number == 1 else f"{base}_{number}"
            number += 1
            record = records.get(name)
            if name in taken or (record and record.get("input", {}).get("path") != identity["path"]):
                continue
            break
        taken.add(name)
        files = [out / f for f in outputs(name)]
        for file in files:
            if not file.exists():
                continue
            stat = file.stat()
            if (stat.st_dev, stat.st_ino) in inputs:
                raise HermesError(f"{name}: the output {file} would replace an input of this batch; "
                                  "choose another --out")
            if not is_ours(file):
                raise HermesError(f"{name}: {file} exists and was not written by hermes-segment; "
                                  "move it away or choose another --out")
        done = (not overwrite and record is not None and record.get("input") == identity
                and (request is None or _made_for(record.get("request"), request))
                and all(f.exists() for f in files))
        cases.append(Case(path, name, identity, done))
    return cases


def _made_for(recorded: object, asked: dict) -> bool:
    """True when outputs made for the ``recorded`` request answer the ``asked`` one: the same
    request, or the same with more targets."""
    if not isinstance(recorded, dict):
        return False
    asked = json.loads(json.dumps(asked))  # as the record holds it (tuples as lists)
    if {k: v for k, v in recorded.items() if k != "targets"} != {k: v for k, v in asked.items() if k != "targets"}:
        return False
    return set(asked.get("targets") or []) <= set(recorded.get("targets") or [])


@contextlib.contextmanager
def case_files(out: Path, case: Case, request: dict) -> Iterator[Path]:
    """A staging folder for the case's files; on success they are moved into ``out`` and the
    record is written last. On any failure or interrupt the staging folder is removed and the
    case has no record (it is not done)."""
    staging = out / f".partial-{uuid.uuid4().hex[:8]}-{case.name}"
    staging.mkdir()
    record = out / f"{case.name}{RECORD_SUFFIX}"
    try:
        yield staging
        with contextlib.suppress(FileNotFoundError):
            record.unlink()  # while the files change, the case is not done
        names = sorted(p.name for p in staging.iterdir())
        for name in names:
            os.replace(staging / name, out / name)
        write_text(record, json.dumps({"written_by": MARK, "case": case.name, "input": case.identity,
                                       "request": request, "outputs": names}, indent=2))
    finally:
        shutil.rmtree(staging, ignore_errors=True)

