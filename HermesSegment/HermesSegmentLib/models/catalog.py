"""The catalog of known models and the user's model folder.

- Bundled models ship in ``HermesSegment/Resources/Models/`` and are listed in its
  ``catalog.json`` (schema: ``data/catalog.schema.json``); the demo model is one of them.
- Downloadable models are catalog entries with a URL and a SHA-256; a download is verified
  before it is moved into place.
- The user's models (imported Hermes-R, their own trained packages, downloads) live in
  ``$HERMES_SEGMENT_HOME/models`` (default ``~/.hermes-segment/models``), one ``<name>.safetensors`` each.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from ..atomic import atomic_paths
from ..errors import HermesError
from .manifest import DATA_DIR
from .package import read_manifest, sha256_file

BUNDLED_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Models"


@dataclass
class ModelListing:
    name: str
    title: str
    source: str  # "bundled", "user" or "catalog"
    path: Path | None  # None until a downloadable model is downloaded
    url: str | None = None
    sha256: str | None = None
    how_to_get: str | None = None
    aliases: tuple[str, ...] = ()
    weights_links: tuple[tuple[str, str], ...] = ()  # (title, url) where the upstream weights are published

    @property
    def available(self) -> bool:
        return self.path is not None and self.path.is_file()

    @property
    def links_text(self) -> str:
        """Where the weights are published, on one line (``how_to_get`` speaks of these links)."""
        return "; ".join(f"{title}: {url}" for title, url in self.weights_links)

    @property
    def size_bytes(self) -> int | None:
        return self.path.stat().st_size if self.path is not None and self.path.is_file() else None


def user_home() -> Path:
    return Path(os.environ.get("HERMES_SEGMENT_HOME", Path.home() / ".hermes-segment")).expanduser()


def user_models_dir() -> Path:
    return user_home() / "models"


@lru_cache(maxsize=1)
def _catalog_schema() -> dict[str, Any]:
    return json.loads((DATA_DIR / "catalog.schema.json").read_text(encoding="utf-8"))


def load_catalog(path: str | Path) -> dict[str, Any]:
    import jsonschema

    path = Path(path)
    try:
        catalog = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise HermesError(f"catalog {path} is unreadable ({error})") from None
    problem = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_catalog_schema()).iter_errors(catalog))
    if problem is not None:
        where = "/".join(str(p) for p in problem.absolute_path) or "(top level)"
        raise HermesError(f"catalog {path.name}: invalid at {where}: {problem.message.splitlines()[0]}")
    return catalog


def list_models(catalog_path: str | Path | None = None) -> list[ModelListing]:
    """Bundled and downloadable catalog entries first, then the user's own packages."""
    catalog_path = Path(catalog_path) if catalog_path else BUNDLED_DIR / "catalog.json"
    listings: list[ModelListing] = []
    for entry in load_catalog(catalog_path)["models"] if catalog_path.is_file() else []:
        if "file" in entry:
            listings.append(ModelListing(entry["name"], entry["title"], "bundled", catalog_path.parent / entry["file"],
                                         aliases=tuple(entry.get("aliases", ()))))
        else:
            local = user_models_dir() / f"{entry['name']}.safetensors"
            listings.append(
                ModelListing(entry["name"], entry["title"], "catalog", local if local.is_file() else None,
                             entry.get("url"), entry.get("sha256"), entry.get("how_to_get"),
                             tuple(entry.get("aliases", ())),
                             tuple((link["title"], link["url"]) for link in entry.get("weights_links", ())))
            )
    known = {m.name for m in listings}
    folder = user_models_dir()
    for path in sorted(folder.glob("*.safetensors")) if folder.is_dir() else []:
        if path.stem not in known:
            listings.append(ModelListing(path.stem, path.stem, "user", path))
    return listings


def resolve(model: str | Path) -> Path:
    """A model name from the catalog or the user folder, or a path to a package file."""
    candidate = Path(model).expanduser()
    if candidate.suffix == ".safetensors" or candidate.is_file() or os.sep in str(model):
        if candidate.is_dir():
            raise HermesError(f"{candidate} is a folder; give the model's .safetensors file")
        if not candidate.is_file():
            raise HermesError(f"model file not found: {candidate}")
        return candidate
    listings = {name: m for m in list_models() for name in (m.name, *m.aliases)}
    listing = listings.get(str(model))
    if listing is None:
        from ..vocabulary import suggest

        close = suggest(str(model), list(listings))
        raise HermesError(
            f"unknown model '{model}'; known: {', '.join(close or listings)} (see `hermes-segment models list`)"
        )
    if not listing.available:
        if listing.url:
            raise HermesError(f"model '{model}' is not downloaded yet; run `hermes-segment models download {model}`")
        links = f" (links: {listing.links_text})" if listing.links_text else ""
        raise HermesError(f"model '{model}' is not installed; "
                          f"{listing.how_to_get or 'add its file with `hermes-segment models add FILE`'}{links}")
    return listing.path  # type: ignore[return-value]


def download(
    name: str, *, url: str | None = None, sha256: str | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download a catalog model into the user folder, verified by SHA-256 before it is moved in place."""
    listing = next((m for m in list_models() if m.name == name), None)
    url = url or (listing.url if listing else None)
    sha256 = (sha256 or (listing.sha256 if listing else None) or "").lower()
    if listing is None and not url:
        raise HermesError(f"unknown model '{name}'; `hermes-segment models list` shows the catalog")
    if not url or not sha256:
        raise HermesError(f"model '{name}' has no download address and checksum in the catalog")
    target = user_models_dir() / f"{name}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_paths([target]) as (temp,):
            with open(temp, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:  # a URL of our catalog
                total = int(response.headers.get("Content-Length") or 0) or None
                done = 0
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total)
            digest = sha256_file(temp)
            if digest != sha256:
                raise HermesError(f"download of '{name}' failed its SHA-256 check (got {digest[:12]}…, "
                                  f"expected {sha256[:12]}…); nothing was installed")
            read_manifest(temp)
    except (urllib.error.URLError, OSError) as error:
        raise HermesError(f"could not download '{name}' from {url} ({error}); check the network or install the file "
                          "by hand") from None
    return target


def add(path: str | Path) -> Path:
    """Validate a package and copy it into the user folder under its manifest name."""
    source = Path(path)
    manifest = read_manifest(source)
    bundled = {name for m in list_models() if m.source == "bundled" for name in (m.name, *m.aliases)}
    if manifest["name"] in bundled:  # the bundled file would still be the one used under that name
        raise HermesError(f"'{manifest['name']}' is the name of a bundled model, which keeps that name; give your "
                          "package another `name` (the training config's) or use it by its path")
    target = user_models_dir() / f"{manifest['name']}.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_paths([target]) as (temp,):
        shutil.copyfile(source, temp)
    return target


def remove(name: str) -> Path:
    """Delete a model from the user folder (bundled models cannot be removed)."""
    target = user_models_dir() / f"{name}.safetensors"
    if not target.is_file():
        raise HermesError(f"'{name}' is not in the user model folder {user_models_dir()}; bundled models cannot be "
                          "removed")
    target.unlink()
    return target
