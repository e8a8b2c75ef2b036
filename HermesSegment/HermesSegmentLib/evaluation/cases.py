"""Case matching: the cases of a folder (named by ``read.case_name``), predictions paired with ground truth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Mapping, Tuple, Union

from ..errors import HermesError
from ..read import CASE_SUFFIXES, case_name

PathLike = Union[str, Path]

_CHANNEL = "_0000"  # nnU-Net's image channel suffix: case_0007_0000.nii.gz is case_0007


def find_cases(path: PathLike) -> Dict[str, Path]:
    """{case name: file} for a file or a folder (not recursive).

    In a folder: files ending in one of ``read.CASE_SUFFIXES``, plus per-target sidecars (whose listed
    files then belong to that case). Hidden and ``.partial-`` files are skipped; two files for one
    case are an error.
    """
    path = Path(path)
    if not path.exists():
        raise HermesError(f"{path}: no such file or folder; check the path")
    if path.is_file():
        return {case_name(path): path}
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    claimed: set[str] = set()
    cases: Dict[str, Path] = {}
    for json_file in (p for p in files if p.name.lower().endswith(".json")):
        try:
            entries = json.loads(json_file.read_text(encoding="utf-8")).get("labels")
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            continue  # not ours: some other JSON in the folder
        if isinstance(entries, list) and entries and all(isinstance(e, Mapping) and "file" in e for e in entries):
            cases[case_name(json_file)] = json_file
            claimed.update(str(e["file"]) for e in entries)
    for file in files:
        lower = file.name.lower()
        if file.name in claimed or not lower.endswith(CASE_SUFFIXES):
            continue
        name = case_name(file)
        if name in cases:
            raise HermesError(f"{path}: two files for case {name!r} ({cases[name].name}, {file.name}); "
                              "keep one per case")
        cases[name] = file
    if not cases:
        raise HermesError(f"{path}: no segmentation files ({', '.join(CASE_SUFFIXES)}) found")
    return cases


def match_cases(pred: PathLike, truth: PathLike) -> Tuple[List[Tuple[str, Path, Path]], List[str], List[str]]:
    """Pair predictions with ground truth by case name.

    Names match when equal, or when one is the other plus the nnU-Net channel suffix ``_0000``
    (``case_0007_0000`` pairs with ``case_0007``). Two files are paired whatever their names.
    Returns (pairs [(truth case name, pred file, truth file)] sorted by case, truth cases without
    a prediction, prediction cases without truth). No pair at all is a :class:`HermesError`.
    """
    pred_cases, truth_cases = find_cases(pred), find_cases(truth)
    if Path(pred).is_file() and Path(truth).is_file():
        (truth_name, truth_file), = truth_cases.items()
        return [(truth_name, next(iter(pred_cases.values())), truth_file)], [], []
    pairs = {}
    for name, file in pred_cases.items():
        for candidate in (name, name[: -len(_CHANNEL)] if name.endswith(_CHANNEL) else None, name + _CHANNEL):
            if candidate in truth_cases and candidate not in pairs:
                pairs[candidate] = (name, file)
                break
    if not pairs:
        raise HermesError(f"no case name is in both {pred} and {truth} (e.g. {sorted(pred_cases)[0]!r} vs "
                          f"{sorted(truth_cases)[0]!r}); files are matched by name without extension and _0000")
    used = {name for name, _ in pairs.values()}
    return ([(case, pairs[case][1], truth_cases[case]) for case in sorted(pairs)],
            sorted(set(truth_cases) - set(pairs)), sorted(set(pred_cases) - used))
