"""The packages listed in CLEAN_PACKAGES pass `mypy --strict` (configured in pyproject.toml).

A package joins the list in the landing that brings it to zero errors, so it stays there;
`python3 -m mypy` (no arguments) checks the whole of src/ember with the same settings.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "ember"

# Paths under src/ember: packages (folders) and top-level modules at zero errors.
CLEAN_PACKAGES: list[str] = [
    "__init__.py",
    "_common",
    "_private",
    "_raylet.py",
    "actor.py",
    "api",
    "autoscaler",
    "bench",
    "cli",
    "cluster_utils.py",
    "core",
    "dag",
    "dashboard",
    "exceptions.py",
    "gcs",
    "job_config.py",
    "job_submission",
    "jobs",
    "protocol",
    "ray_constants.py",
    "raylet",
    "rpc",
    "runtime_context.py",
    "runtime_env",
    "state.py",
    "util",
    "worker.py",
]
# Packages still being brought to zero (issue 11); each moves to CLEAN_PACKAGES when it gets there.
NOT_YET_CLEAN: list[str] = []


def _run_mypy(paths: list[str], cache_dir: Path) -> subprocess.CompletedProcess[str]:
    try:
        import mypy  # noqa: F401
    except ImportError:
        pytest.fail("mypy is not installed: install the test extra (pip install -e '.[test]')")
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(cache_dir), "--no-color-output",
         "--show-error-codes", *paths],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )


@pytest.fixture(scope="module")
def mypy_cache(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Under pytest's cache folder: a warm cache makes a re-run take about a second. Without
    # the cache plugin (`-p no:cacheprovider`) `config.cache` does not exist: a cold cache
    # in this run's temp dir checks the same thing, only slower.
    cache = getattr(request.config, "cache", None)
    if cache is None:
        return tmp_path_factory.mktemp("mypy_cache")
    return Path(cache.mkdir("mypy"))


def test_clean_packages_exist() -> None:
    missing = [p for p in CLEAN_PACKAGES if not (SRC / p).exists()]
    assert not missing, f"CLEAN_PACKAGES names paths that are gone (renamed?): {missing}"


def test_every_package_is_listed() -> None:
    # A new package or module is checked from its first landing: it must be named in one list.
    entries = sorted(
        p.name for p in SRC.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists()) or (p.is_file() and p.suffix == ".py")
    )
    unlisted = [e for e in entries if e not in CLEAN_PACKAGES and e not in NOT_YET_CLEAN]
    assert not unlisted, f"add these to CLEAN_PACKAGES in tests/test_typecheck.py (or to NOT_YET_CLEAN): {unlisted}"
    assert not set(CLEAN_PACKAGES) & set(NOT_YET_CLEAN)


def test_clean_packages_pass_mypy_strict(mypy_cache: Path) -> None:
    result = _run_mypy([str(SRC / p) for p in CLEAN_PACKAGES], mypy_cache)
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert result.returncode == 0 and not errors, (
        f"mypy --strict found {len(errors)} error(s) in packages that must stay clean:\n"
        + "\n".join(errors or [result.stdout, result.stderr])
    )


def test_the_configuration_reports_errors(mypy_cache: Path, tmp_path: Path) -> None:
    # The same settings find an untyped function and a wrong return: the check is not a no-op.
    bad = tmp_path / "bad_module.py"
    bad.write_text("def untyped(x):\n    return x\n\n\ndef wrong() -> int:\n    return 'text'\n")
    result = _run_mypy([str(bad)], mypy_cache)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "[no-untyped-def]" in result.stdout and "[return-value]" in result.stdout, result.stdout
