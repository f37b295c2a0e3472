"""benchmarks/README.md's generated sections (summary and time estimate) equal what
benchmarks/readme_tables.py renders from benchmarks/results, so the README cannot drift from the records."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "readme_tables.py"


def check(readme: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--check", "--readme", str(readme)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_readme_tables_are_the_scripts_output():
    result = check(ROOT / "benchmarks" / "README.md")
    assert result.returncode == 0, result.stderr


def test_a_hand_edited_figure_is_caught(tmp_path):
    readme = tmp_path / "README.md"
    shutil.copy(ROOT / "benchmarks" / "README.md", readme)
    text = readme.read_text(encoding="utf-8")
    start = text.index("<!-- summary:start -->")
    readme.write_text(text[:start] + text[start:].replace("9.83", "7.83", 1), encoding="utf-8")
    result = check(readme)
    assert result.returncode == 1
    assert "readme_tables.py --write" in result.stderr
