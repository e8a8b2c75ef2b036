"""Dependencies inside Slicer: what is missing is found from installed metadata (nothing imported), an
old torch is reported and never replaced, installs run as background processes that pin Slicer's numpy
and SimpleITK."""

from __future__ import annotations

import sys

import numpy as np

from HermesSegmentLib.slicer import background as process
from HermesSegmentLib.slicer import install


def test_requirements_file_is_read_without_torch():
    requirements = install.read_requirements()
    assert requirements and not any(r.lower().startswith("torch") for r in requirements)


def test_missing_torch_and_old_torch_are_reported(monkeypatch):
    versions: dict[str, str | None] = {  # all satisfied
        install._name(r).replace("-", "_"): "99" for r in install.read_requirements()
    }
    versions.update({"torch": None, "jsonschema": "4.20"})
    monkeypatch.setattr(install, "installed_version", lambda name: versions.get(name.lower().replace("-", "_")))
    missing = install.find_missing()
    assert missing.torch.startswith("is not installed") and not missing.packages
    commands = install.install_commands(missing, "python")
    assert [c[1:4] for c in commands] == [["-m", "pip", "install"], ["-m", "light_the_torch", "install"]]
    versions["torch"] = "1.13.1+cu117"
    missing = install.find_missing()
    assert missing.torch_outdated and "1.13.1+cu117 is older than 2.1" in missing.describe()
    assert install.install_commands(missing, "python") == [], "an outdated torch is reported, never replaced"
    versions["torch"], versions["jsonschema"] = "2.3.0", None
    assert install.find_missing().packages == ["jsonschema>=4.18"]


def test_install_pins_slicers_own_numpy_and_simpleitk(tmp_path):
    text = install.constraints_file(tmp_path).read_text()
    assert f"numpy=={np.__version__}" in text


def test_command_sequence_runs_commands_in_order_and_reports_failure():
    ok = [sys.executable, "-c", "print('one')"]
    bad = [sys.executable, "-c", "import sys; print('error: no wheel for this platform', file=sys.stderr); sys.exit(1)"]
    run = process.CommandSequence([ok, bad, ok]).start()
    lines = []
    while not run.finished:
        lines += run.poll()
    assert "one" in lines and run.done == 1
    assert run.error() == "no wheel for this platform"


def test_missing_requirements_checks_versions():
    assert install.missing_requirements(["numpy>=1.0"]) == []
    assert install.missing_requirements(["numpy>=999"]) == ["numpy>=999"]
    assert install.missing_requirements(["surely-not-installed-pkg-xyz"]) == ["surely-not-installed-pkg-xyz"]
