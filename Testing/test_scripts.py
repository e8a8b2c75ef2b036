"""The scripts beside the package (benchmarks/, tools/) at least load: every name they import at
module level exists (so they import their helpers there, not inside functions). A benchmark is
run by hand, rarely: a refactor that removed three helpers memory_hermes_r.py imported went
unnoticed until someone ran it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from results_file import add_newest_first  # noqa: E402

LOAD_ALL = """
import runpy, sys, traceback
failed = []
for path in sys.argv[1:]:
    try:
        runpy.run_path(path, run_name="loaded_by_test")  # module code only: main() is not called
    except BaseException:
        failed.append(path + ": " + traceback.format_exc().strip().splitlines()[-1])
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_every_benchmark_and_tool_script_loads():
    scripts = sorted(str(p) for folder in ("benchmarks", "tools") for p in (REPO / folder).glob("*.py"))
    assert len(scripts) >= 10
    run = subprocess.run([sys.executable, "-c", LOAD_ALL, *scripts], capture_output=True, text=True, timeout=300,
                         cwd=REPO, check=False)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]


def test_new_benchmark_tables_go_first_after_the_introduction(tmp_path):
    results = tmp_path / "benchmarks.md"
    results.write_text("# Benchmarks\n\nIntro.\n\n### Old run — 2026-01-01\n\n| a |\n", encoding="utf-8")
    add_newest_first(results, "### New run — 2026-02-02\n\n| b |")
    assert results.read_text(encoding="utf-8") == (
        "# Benchmarks\n\nIntro.\n\n### New run — 2026-02-02\n\n| b |\n\n### Old run — 2026-01-01\n\n| a |\n")
    add_newest_first(results, "### Newer run — 2026-03-03\n\n| c |\n")
    assert results.read_text(encoding="utf-8").index("Newer run") < results.read_text(encoding="utf-8").index("New run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["benchmarks.md"]  # no temporary file left


def test_the_first_table_of_a_new_file_follows_its_introduction(tmp_path):
    results = tmp_path / "fresh.md"
    add_newest_first(results, "### Run — 2026-02-02\n\n| b |")
    assert results.read_text(encoding="utf-8") == "### Run — 2026-02-02\n\n| b |\n"
    intro_only = tmp_path / "intro.md"
    intro_only.write_text("# Benchmarks\nIntro.", encoding="utf-8")
    add_newest_first(intro_only, "### Run\n")
    assert intro_only.read_text(encoding="utf-8") == "# Benchmarks\nIntro.\n\n### Run\n"
