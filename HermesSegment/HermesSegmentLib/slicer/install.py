"""HermesSegment's Python dependencies inside Slicer: found missing when the panel opens, installed on
the user's click, in background processes (the GUI stays responsive and shows pip's output).

Slicer bundles numpy and SimpleITK but none of torch, scipy, safetensors, jsonschema, pyyaml, tqdm.
Nothing is imported to find out what is missing (importing torch into Slicer's process takes seconds and
locks its files): versions come from the installed distributions' metadata.

- torch: as the PyTorch extension (``PyTorchUtilsLogic.installTorch``) does it -- light-the-torch picks
  the wheel matching the GPU driver -- but in a background process. An installed torch older than
  :data:`TORCH_MINIMUM` is reported, never silently used (the user updates it in the PyTorch Utils
  module, since other extensions may depend on it).
- the packages of ``Resources/requirements.txt``: ``python -m pip install`` with Slicer's own numpy and
  SimpleITK pinned by a constraints file, so that pip never replaces them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REQUIREMENTS_FILE = Path(__file__).resolve().parents[2] / "Resources" / "requirements.txt"
TORCH_MINIMUM = "2.1"
#: Packages Slicer ships built for itself: pinned to the installed version during an install.
SLICER_OWNED = ("numpy", "SimpleITK")


def read_requirements(path: Path = REQUIREMENTS_FILE) -> list[str]:
    """Requirement strings of a requirements file (comments, blanks and torch left out)."""
    requirements = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and _name(line) != "torch":
            requirements.append(line)
    return requirements


def _name(requirement: str) -> str:
    """Canonical distribution name of a requirement string (``"SimpleITK>=2.3"`` -> ``"simpleitk"``)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    return re.sub(r"[-_.]+", "-", match.group(0)).lower() if match else ""


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def installed_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_requirements(requirements: Sequence[str]) -> list[str]:
    """The requirements not satisfied in this Python (version specifiers included)."""
    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        requirement = Requirement(text)
        version = installed_version(requirement.name)
        if version is None or (requirement.specifier and not requirement.specifier.contains(version, prereleases=True)):
            missing.append(text)
    return missing


@dataclass
class Missing:
    """What must be installed before the panel can segment."""

    torch: str = ""  # "" when fine, else why torch is a problem ("not installed", "1.13 is older than 2.1")
    packages: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.torch or self.packages)

    @property
    def torch_outdated(self) -> bool:
        return self.torch.startswith("PyTorch ") and "older" in self.torch

    def describe(self) -> str:
        """One paragraph for the panel: what is missing and what Install will do."""
        parts = []
        if self.torch_outdated:
            parts.append(f"{self.torch}: update it in the PyTorch Utils module (other extensions may use it).")
        elif self.torch:
            parts.append(f"PyTorch {self.torch}.")
        if self.packages:
            parts.append(f"Python packages to install: {', '.join(_name(p) for p in self.packages)}.")
        return " ".join(parts)


def find_missing(requirements_file: Path = REQUIREMENTS_FILE) -> Missing:
    """Torch and the requirements, checked from installed metadata (nothing is imported)."""
    torch = installed_version("torch")
    if torch is None:
        problem = "is not installed (it comes through the PyTorch extension)"
    elif _version_tuple(torch) < _version_tuple(TORCH_MINIMUM):
        problem = f"PyTorch {torch} is older than {TORCH_MINIMUM}, the minimum HermesSegment needs"
    else:
        problem = ""
    return Missing(problem, missing_requirements(read_requirements(requirements_file)))


def constraints_file(folder: Path) -> Path:
    """A pip constraints file pinning Slicer's own builds (:data:`SLICER_OWNED`) at their versions."""
    path = folder / "slicer-constraints.txt"
    pins = [f"{name}=={version}" for name in SLICER_OWNED if (version := installed_version(name))]
    path.write_text("\n".join(pins) + "\n", encoding="utf-8")
    return path


def install_commands(missing: Missing, python: str | None = None, folder: Path | None = None) -> list[list[str]]:
    """The command lines that install ``missing`` (an outdated torch is left to the user: see Missing)."""
    python = python or sys.executable
    folder = folder or Path(tempfile.mkdtemp(prefix="HermesSegment-install-"))
    constraints = ["-c", str(constraints_file(folder))]
    commands = []
    if missing.torch and not missing.torch_outdated:
        commands.append([python, "-m", "pip", "install", "light-the-torch>=0.5", *constraints])
        commands.append([python, "-m", "light_the_torch", "install", f"torch>={TORCH_MINIMUM}", *constraints])
    if missing.packages:
        commands.append([python, "-m", "pip", "install", *missing.packages, *constraints])
    return commands


def describe_devices() -> str:
    """One line on the compute devices torch sees, for the Advanced section (imports torch: call on demand)."""
    if installed_version("torch") is None:
        return "PyTorch is not installed yet: click Install at the top of the panel."
    import torch

    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        return "; ".join(f"GPU {i}: {g.name}, {g.total_memory / 2**30:.1f} GiB" for i, g in enumerate(gpus))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "Apple GPU (MPS) found: choose it explicitly under Device (experimental)."
    return "No GPU found: segmentation runs on the CPU (slower)."
