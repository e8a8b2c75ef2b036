"""Name matching: user spellings folded for lookup, close matches suggested for error messages."""

from __future__ import annotations

import difflib
import re
from typing import Iterable, Mapping, Union


def normalize_name(name: str) -> str:
    """Fold a user-typed name for lookup: lowercase, drop spaces, underscores, hyphens and punctuation.

    ``"Left kidney"``, ``"left_kidney"`` and ``"LEFT-KIDNEY"`` all become ``"leftkidney"``.
    """
    return re.sub(r"[^0-9a-z]+", "", name.casefold())


def suggest(
    name: str,
    candidates: Union[Iterable[str], Mapping[str, str]],
    n: int = 3,
    cutoff: float = 0.6,
) -> list:
    """Return up to *n* of *candidates* closest to *name* (``difflib``), best first, never empty if any exist.

    Matching is done on :func:`normalize_name` forms, so case and separators do not matter. If
    *candidates* is a mapping, its keys are matched and its values returned (several spellings
    may map to one key; each value is returned once). When nothing reaches *cutoff*, the closest
    candidates are returned anyway, so an error message always has something to offer.
    """
    if isinstance(candidates, Mapping):
        pairs = [(str(k), str(v)) for k, v in candidates.items()]
    else:
        pairs = [(str(c), str(c)) for c in candidates]
    if not pairs or n <= 0:
        return []
    by_norm: dict = {}
    for spelled, value in pairs:
        values = by_norm.setdefault(normalize_name(spelled) or spelled.casefold(), [])
        if value not in values:
            values.append(value)
    query = normalize_name(name) or name.casefold()
    norms = list(by_norm)
    ranked = difflib.get_close_matches(query, norms, n=len(norms), cutoff=cutoff)
    if not ranked:
        ranked = sorted(norms, key=lambda c: difflib.SequenceMatcher(None, query, c).ratio(), reverse=True)
    out: list = []
    for norm in ranked:
        for value in by_norm[norm]:
            if value not in out:
                out.append(value)
            if len(out) >= n:
                return out
    return out


def fold_modality(name: str) -> str:
    """Modality lookup form: lowercase with runs of space/underscore/hyphen folded to one space."""
    return re.sub(r"[\s_\-]+", " ", name.strip().casefold())


def quote(name: str) -> str:
    """Quote a user string for a one-line message (newlines escaped, long strings cut)."""
    text = name if len(name) <= 60 else name[:57] + "..."
    return "'" + text.replace("\n", "\\n").replace("\r", "\\r") + "'"
