"""Static checks of the Slicer extension: what Slicer's build and the Qt GUI need but slicer-core cannot run.

- every ``self.ui.<name>`` the module uses exists in the ``.ui``; its custom widgets are Slicer/CTK classes;
- every ``.py`` and resource under ``HermesSegment/`` is listed in the module ``CMakeLists.txt`` (and
  every listed file exists), since unlisted files are silently left out of the extension package;
- the module file imports nothing outside the standard library at file scope except Slicer's own
  ``slicer``/``qt``/``ctk``/``vtk`` and parses (its size is held by ruff's complexity limits);
- the extension ``CMakeLists.txt`` and ExtensionsIndex JSON carry what Slicer's index needs.
"""

from __future__ import annotations

import ast
import json
import re
import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "HermesSegment"
MODULE_FILE = MODULE_DIR / "HermesSegment.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "HermesSegment.ui"
SLICER_IMPORTS = {"slicer", "qt", "ctk", "vtk"}


def _ui_tree() -> ET.ElementTree[ET.Element]:
    return ET.parse(UI_FILE)


def _module_tree() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def _packaged_files() -> set[str]:
    """Files under HermesSegment/ that belong in the package (no caches, build metadata, dotfiles)."""
    files = set()
    for path in MODULE_DIR.rglob("*"):
        parts = path.relative_to(MODULE_DIR).parts
        hidden = any(p == "__pycache__" or p.endswith(".egg-info") or p.startswith(".") for p in parts)
        if path.is_file() and not hidden:
            if path.suffix != ".pyc" and path.name != "CMakeLists.txt":
                files.add(path.relative_to(MODULE_DIR).as_posix())
    return files


def _cmake_list(text: str, variable: str) -> list[str]:
    match = re.search(rf"set\({variable}\s+(.*?)\)", text, re.S)
    assert match, f"{variable} is not set"
    module_name = re.search(r"set\(MODULE_NAME\s+(\S+)\)", text)
    assert module_name, "MODULE_NAME is not set"
    name = module_name.group(1)
    return [entry.replace("${MODULE_NAME}", name) for entry in match.group(1).split()]


def test_widget_object_names_exist_in_ui():
    names = {w.get("name") for w in _ui_tree().iter("widget")}
    used = {
        node.attr
        for node in ast.walk(_module_tree())
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }
    assert used, "the widget uses no self.ui.<name>?"
    assert used <= names, f"used by the widget but missing in the .ui: {sorted(used - names)}"


def test_ui_custom_widgets_are_slicer_or_ctk_classes():
    tree = _ui_tree()
    custom = {c.findtext("class"): c for c in tree.iter("customwidget")}
    for name, element in custom.items():
        assert name is not None, "a customwidget has no class"
        assert re.match(r"(qMRML|qSlicer|ctk)\w+$", name), f"{name} is not a Slicer/CTK widget"
        assert element.findtext("header") == f"{name}.h"
    for widget in tree.iter("widget"):
        cls = widget.get("class")
        assert cls is not None, f"widget {widget.get('name')} has no class"
        assert cls.startswith("Q") or cls in custom, f"{cls} ({widget.get('name')}) is neither Qt nor declared"
    top = tree.getroot().find("widget")
    assert top is not None, "the .ui has no top-level widget"
    assert top.get("class") == "qMRMLWidget"


def test_ui_sections_and_key_widgets():
    widgets = {w.get("name"): w for w in _ui_tree().iter("widget")}
    sections = [w.findtext("property/string") for w in widgets.values() if w.get("class") == "ctkCollapsibleButton"]
    assert sections == ["Inputs", "Targets", "Model", "Run on", "Advanced", "Output"]
    output = widgets["outputSegmentationSelector"]
    props = {p.get("name"): p for p in output.findall("property")}
    assert props["nodeTypes"].findtext("stringlist/string") == "vtkMRMLSegmentationNode"
    assert props["noneEnabled"].findtext("bool") == "true"
    assert props["noneDisplay"].findtext("string") == "Create new segmentation"
    input_types = widgets["inputVolumeSelector"].find("property[@name='nodeTypes']")
    assert input_types is not None, "inputVolumeSelector has no nodeTypes"
    assert input_types.findtext("stringlist/string") == "vtkMRMLScalarVolumeNode"


def test_ui_parameter_bindings_match_parameter_node():
    bound = {
        p.findtext("string")
        for w in _ui_tree().iter("widget")
        for p in w.findall("property")
        if p.get("name") == "SlicerParameterName"
    }
    node_class = next(
        n for n in _module_tree().body if isinstance(n, ast.ClassDef) and n.name == "HermesSegmentParameterNode"
    )
    fields = {n.target.id for n in node_class.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    assert bound == fields


def test_every_script_and_resource_is_listed_in_cmake():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts, resources = _cmake_list(text, "MODULE_PYTHON_SCRIPTS"), _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    listed = set(scripts) | set(resources)
    assert all(s.endswith(".py") for s in scripts) and not any(r.endswith(".py") for r in resources)
    assert len(listed) == len(scripts) + len(resources), "a file is listed twice"
    present = _packaged_files()
    assert not present - listed, f"not listed in HermesSegment/CMakeLists.txt: {sorted(present - listed)}"
    assert not listed - present, f"listed but missing: {sorted(listed - present)}"
    assert "slicerMacroBuildScriptedModule" in text and "slicer_add_python_unittest" in text


def test_module_file_imports_only_stdlib_and_slicer_at_file_scope():
    # The module file stays thin through ruff's complexity limits (pyproject.toml), run by `make test`.
    allowed = set(sys.stdlib_module_names) | SLICER_IMPORTS
    for node in _module_tree().body:  # file scope only; imports inside functions are the point
        if isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            roots = [(node.module or "").split(".")[0]]
        else:
            continue
        for root in roots:
            assert root in allowed, f"file-scope import of '{root}' in HermesSegment.py (line {node.lineno})"
    classes = {n.name for n in _module_tree().body if isinstance(n, ast.ClassDef)}
    assert {"HermesSegment", "HermesSegmentWidget", "HermesSegmentLogic", "HermesSegmentTest"} <= classes


@pytest.mark.parametrize("name", ["slicer/mrml_logic", "slicer/background", "slicer/install", "slicer/sample_data"])
def test_lib_modules_never_import_qt(name):
    tree = ast.parse((MODULE_DIR / "HermesSegmentLib" / f"{name}.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        assert not any(m.split(".")[0] in {"qt", "ctk", "PythonQt"} for m in modules), f"{name}.py imports Qt"


def test_extension_cmakelists():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    for needle in (
        "cmake_minimum_required(", "project(HermesSegment)", 'set(EXTENSION_CATEGORY "Segmentation")',
        'set(EXTENSION_DEPENDS "PyTorch")', "find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
        "add_subdirectory(HermesSegment)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
        "include(${Slicer_EXTENSION_CPACK})",
    ):
        assert needle in text, needle
    for variable in ("HOMEPAGE", "CONTRIBUTORS", "DESCRIPTION", "ICONURL", "SCREENSHOTURLS"):
        assert re.search(rf'set\(EXTENSION_{variable} "[^"]+"\)', text), variable


def test_extensions_index_json_matches_cmake():
    """The Extensions Index reads this JSON (the .s4ext format is obsolete since 2024 and not shipped)."""
    entry = json.loads((REPO / "HermesSegment.json").read_text(encoding="utf-8"))
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert not (REPO / "HermesSegment.s4ext").exists()
    assert entry["$schema"].startswith("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/")
    assert f'set(EXTENSION_CATEGORY "{entry["category"]}")' in cmake
    assert f'set(EXTENSION_DEPENDS "{" ".join(entry["build_dependencies"])}")' in cmake
    homepage = re.search(r'set\(EXTENSION_HOMEPAGE "([^"]+)"\)', cmake)
    assert homepage, "EXTENSION_HOMEPAGE is not set"
    assert entry["scm_url"].removesuffix(".git") == homepage.group(1)
    assert set(entry) <= {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled",
                          "scm_revision", "scm_type", "scm_url", "tier"}  # the schema forbids other keys


def test_contributors_in_the_index_form():
    """"Firstname Lastname (Organisation)", comma separated, the same in CMake and in the module."""
    cmake = re.search(r'set\(EXTENSION_CONTRIBUTORS "([^"]+)"\)', (REPO / "CMakeLists.txt").read_text(encoding="utf-8"))
    assert cmake, "EXTENSION_CONTRIBUTORS is not set"
    people = [p.strip() for p in cmake.group(1).split(",")]
    assert all(re.fullmatch(r"[^(),]+ [^(),]+ \([^()]+\)", p) for p in people), people
    assert f"contributors = {people!r}".replace("'", '"') in MODULE_FILE.read_text(encoding="utf-8")


@pytest.mark.parametrize("path", ["HermesSegment/Resources/Icons/HermesSegment.png",
                                  "Resources/Icons/HermesSegment.png"])
def test_icons_are_128_png(path):
    data = (REPO / path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", data[16:24]) == (128, 128)


def test_requirements_leave_torch_to_the_pytorch_extension():
    lines = [
        line.split("#")[0].strip()
        for line in (MODULE_DIR / "Resources" / "requirements.txt").read_text(encoding="utf-8").splitlines()
    ]
    names = set()
    for line in filter(None, lines):
        name = re.match(r"[A-Za-z0-9_.-]+", line)
        assert name, f"requirements.txt line {line!r} does not start with a package name"
        names.add(name.group(0).lower())
    assert names and "torch" not in names
