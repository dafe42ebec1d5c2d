"""The README's first command, in a fresh clone and a fresh virtual environment, gets the report.

Slow (it installs every dependency from the package registry): run with `pytest -m slow`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from crashlab.ingest.paths import REPO


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_readme_opens_with_two_commands():
    first, second = readme_commands()
    assert "crashlab demo" in first and "pip install" in first
    assert "pytest" in second
    assert "pytest" in (REPO / ".ci" / "run").read_text()


@pytest.mark.slow
def test_fresh_clone_follows_readme(tmp_path):
    clone = tmp_path / "crashlab"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    first, _ = readme_commands()
    proc = subprocess.run(["bash", "-c", first], cwd=clone, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    index = clone / "data" / "demo" / "report" / "index.html"
    assert index.exists() and index.stat().st_size > 100_000
    assert "report:" in proc.stdout
