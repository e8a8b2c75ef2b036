"""On-demand dependency installation: what is asked, what is installed, and through which Slicer API.

Slicer's application-level installers (``slicer.pydeps``, ``slicer.util.pip_install``, the PyTorch
extension) do not exist in slicer-core, so they are recorded by stand-ins here.
"""

from __future__ import annotations

import sys
import types

import pytest

from HermesSegmentLib.slicer import install
from HermesSegmentLib.errors import HermesError


@pytest.fixture()
def fake_slicer(monkeypatch):
    calls: list = []
    util = types.SimpleNamespace(pip_install=lambda reqs: calls.append(("pip_install", list(reqs))))
    pydeps = types.SimpleNamespace(
        pip_ensure=lambda reqs, **kw: calls.append(("pip_ensure", [str(r) for r in reqs], kw))
    )
    module = types.SimpleNamespace(util=util, pydeps=pydeps)
    monkeypatch.setitem(sys.modules, "slicer", module)
    torch_logic = types.SimpleNamespace(installTorch=lambda **kw: calls.append(("installTorch", kw)) or object())
    monkeypatch.setitem(
        sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=lambda: torch_logic)
    )
    return module, calls


def test_requirements_file_is_read_without_torch():
    requirements = install.read_requirements()
    assert requirements and not any(r.lower().startswith("torch") for r in requirements)


def test_nothing_asked_when_everything_is_installed(fake_slicer, monkeypatch):
    _, calls = fake_slicer
    monkeypatch.setattr(install, "missing_requirements", lambda reqs: [])
    monkeypatch.setattr(install, "torch_missing", lambda: False)
    assert install.ensure_dependencies(lambda question: pytest.fail("must not ask"))
    assert calls == []


def test_asks_once_then_installs_torch_and_packages(fake_slicer, monkeypatch):
    _, calls = fake_slicer
    monkeypatch.setattr(install, "missing_requirements", lambda reqs: ["safetensors>=0.4"])
    monkeypatch.setattr(install, "torch_missing", lambda: True)
    questions = []
    assert install.ensure_dependencies(lambda q: questions.append(q) or True)
    assert len(questions) == 1 and "safetensors>=0.4" in questions[0] and "torch" in questions[0]
    assert calls[0] == ("installTorch", {"askConfirmation": False, "torchVersionRequirement": install.TORCH_REQUIREMENT})
    name, requirements, options = calls[1]
    assert name == "pip_ensure" and requirements == ["safetensors>=0.4"]
    assert options["skip_packages"] == ["torch"] and options["prompt_install"] is False


def test_declined_installs_nothing(fake_slicer, monkeypatch):
    _, calls = fake_slicer
    monkeypatch.setattr(install, "missing_requirements", lambda reqs: ["scipy>=1.10"])
    monkeypatch.setattr(install, "torch_missing", lambda: False)
    assert not install.ensure_dependencies(lambda q: False)
    assert calls == []


def test_older_slicer_falls_back_to_pip_install(fake_slicer, monkeypatch):
    module, calls = fake_slicer
    del module.pydeps
    monkeypatch.setattr(install, "missing_requirements", lambda reqs: ["scipy>=1.10"])
    monkeypatch.setattr(install, "torch_missing", lambda: False)
    assert install.ensure_dependencies(lambda q: True)
    assert calls == [("pip_install", ["scipy>=1.10"])]


def test_missing_pytorch_extension_is_a_clear_error(fake_slicer, monkeypatch):
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)
    monkeypatch.setattr(install, "missing_requirements", lambda reqs: [])
    monkeypatch.setattr(install, "torch_missing", lambda: True)
    with pytest.raises(HermesError, match="PyTorch extension"):
        install.ensure_dependencies(lambda q: True)


def test_missing_requirements_checks_versions():
    assert install.missing_requirements(["numpy>=1.0"]) == []
    assert install.missing_requirements(["numpy>=999"]) == ["numpy>=999"]
    assert install.missing_requirements(["surely-not-installed-pkg-xyz"]) == ["surely-not-installed-pkg-xyz"]
