"""The code passes the project's linter (ruff, configured in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing() -> None:
    # The ruff installed with this interpreter (its venv's bin may not be on PATH), else any.
    beside = Path(sys.executable).parent / "ruff"
    ruff = str(beside) if beside.exists() else shutil.which("ruff")
    if ruff is None:
        pytest.fail("ruff is not installed: install the test extra (pip install -e '.[test]')")
    result = subprocess.run(
        [ruff, "check", "--output-format", "concise", "src", "tests"], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_module_named_ray_is_shipped() -> None:
    assert not (ROOT / "src" / "ray").exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].__file__.startswith(str(ROOT))  # type: ignore[union-attr]
