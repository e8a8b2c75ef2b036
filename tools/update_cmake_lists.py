"""Rewrite the script and resource lists of HermesSegment/CMakeLists.txt from the files in git.

Slicer packages only what the module's CMakeLists lists, so every new file must be added there;
Testing/test_slicer_static.py fails until it is. Run: python tools/update_cmake_lists.py
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CMAKE = REPO / "HermesSegment" / "CMakeLists.txt"


def module_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "HermesSegment"],
                            cwd=REPO, check=True, capture_output=True, text=True).stdout.split()
    files = [Path(f).relative_to("HermesSegment").as_posix() for f in listed if (REPO / f).is_file()]
    return sorted(f for f in files if f != "CMakeLists.txt" and not any(p.startswith(".") for p in Path(f).parts))


def block(variable: str, entries: list[str]) -> str:
    body = "\n".join(f"  {e.replace('HermesSegment', '${MODULE_NAME}', 1) if e.startswith('HermesSegment') else e}"
                     for e in entries)
    return f"set({variable}\n{body}\n  )"


def replace_block(text: str, variable: str, entries: list[str]) -> str:
    """``text`` with its ``set(variable ...)`` listing ``entries``; the replacement is a function so that
    re.sub reads no backslash or group reference in a file name."""
    return re.sub(rf"set\({variable}\s+.*?\)", lambda _: block(variable, entries), text, count=1, flags=re.S)


def main() -> None:
    files = module_files()
    scripts = [f for f in files if f.endswith(".py")]
    resources = [f for f in files if not f.endswith(".py")]
    text = CMAKE.read_text(encoding="utf-8")
    for variable, entries in (("MODULE_PYTHON_SCRIPTS", scripts), ("MODULE_PYTHON_RESOURCES", resources)):
        text = replace_block(text, variable, entries)
    CMAKE.write_text(text, encoding="utf-8")
    print(f"{CMAKE.relative_to(REPO)}: {len(scripts)} scripts, {len(resources)} resources")


if __name__ == "__main__":
    main()
