"""Install HermesSegment's Python dependencies inside Slicer, on first use, after asking.

Nothing happens at import time. :func:`ensure_dependencies` is called when the user presses
Segment (or by the self-test):

- packages from ``Resources/requirements.txt`` (torch excluded) through Slicer's
  ``slicer.pydeps.pip_ensure`` (Slicer >= 5.11; ``slicer.packaging.pip_ensure`` is accepted too)
  or ``slicer.util.pip_install`` on older Slicer;
- torch through the PyTorch extension (``PyTorchUtils``), which picks the wheel that matches the
  machine's GPU driver. That extension is a declared dependency (``EXTENSION_DEPENDS PyTorch``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
from collections.abc import Callable
from pathlib import Path

from ..errors import HermesError

REQUIREMENTS_FILE = Path(__file__).resolve().parents[2] / "Resources" / "requirements.txt"
TORCH_REQUIREMENT = ">=2.1"


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


def missing_requirements(requirements: list[str]) -> list[str]:
    """The requirements that are not satisfied in this Python (version specifiers included)."""
    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        requirement = Requirement(text)
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            missing.append(text)
    return missing


def torch_missing() -> bool:
    """True when torch cannot be imported."""
    return importlib.util.find_spec("torch") is None


def describe_devices() -> str:
    """One line on the compute devices torch sees (GPU name and memory), for the Advanced section."""
    if torch_missing():
        return "PyTorch is not installed yet; it is installed on the first Segment."
    import torch

    if torch.cuda.is_available():
        gpus = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
        return "; ".join(f"GPU {i}: {g.name}, {g.total_memory / 2**30:.1f} GiB" for i, g in enumerate(gpus))
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "Apple GPU (MPS) found."
    return "No GPU found: segmentation runs on the CPU (slower)."


def ensure_dependencies(ask: Callable[[str], bool]) -> bool:
    """Make sure torch and the packages of ``requirements.txt`` are installed.

    ``ask(question)`` is called once before anything is installed (the widget shows a Yes/No
    box); returns False when the user declined, True when everything is in place. Raises
    :class:`HermesError` when the PyTorch extension is missing.
    """
    import slicer

    missing = missing_requirements(read_requirements())
    need_torch = torch_missing()
    if not missing and not need_torch:
        return True
    wanted = (["torch (through the PyTorch extension)"] if need_torch else []) + missing
    if not ask(
        "HermesSegment needs these Python packages, which will be downloaded and installed now "
        f"(this can take several minutes):\n\n{chr(10).join(wanted)}\n\nInstall them?"
    ):
        return False
    if need_torch:
        try:
            import PyTorchUtils
        except ImportError:
            raise HermesError(
                "the PyTorch extension is not installed; install 'PyTorch' from the Extensions Manager and restart "
                "Slicer"
            ) from None
        torch_logic = PyTorchUtils.PyTorchUtilsLogic()
        if torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
            return False
    if missing:
        pydeps = getattr(slicer, "pydeps", None) or getattr(slicer, "packaging", None)
        if pydeps is not None and hasattr(pydeps, "pip_ensure"):
            from packaging.requirements import Requirement

            pydeps.pip_ensure(
                [Requirement(r) for r in missing], skip_packages=["torch"], prompt_install=False,
                requester="HermesSegment",
            )
        else:
            slicer.util.pip_install(missing)
    importlib.invalidate_caches()
    return True
