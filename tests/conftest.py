"""Shared fixtures: run the real ``autotrain`` CLI of this checkout in a subprocess.

BLAS threads are pinned (OPENBLAS_NUM_THREADS=1, OMP_NUM_THREADS=1) so that two runs of the
same config give the same floats bit for bit, whatever else the machine is doing.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The data cache's auto folder (~/.cache/autotrain/data) is the user's: the suite, its CLI
# subprocesses included (they inherit this environment), caches under a folder of its own.
os.environ["AUTOTRAIN_CACHE_DIR"] = tempfile.mkdtemp(prefix="autotrain-test-cache-")
atexit.register(shutil.rmtree, os.environ["AUTOTRAIN_CACHE_DIR"], ignore_errors=True)
PINNED_THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# The checkout under test, not an installed copy; argv[0] "autotrain" as the console script.
CLI = [sys.executable, "-c", "import sys; sys.argv[0] = 'autotrain'; from autotrain.cli import main; main()"]


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ, **PINNED_THREADS)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.pop("AUTOTRAIN_FAULT_WRITE_SLEEP", None)
    env.pop("AUTOTRAIN_FAULT_WRITE_ABORT", None)
    env.update(extra or {})
    return env


def cli_popen(*args: str, cwd: str | Path | None = None, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start ``autotrain ARGS...`` without waiting (for signal tests)."""
    return subprocess.Popen([*CLI, *map(str, args)], cwd=cwd, env=cli_env(env), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_cli_subprocess(*args: str, cwd: str | Path | None = None, env: dict[str, str] | None = None,
                       timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``autotrain ARGS...`` to the end; returns the CompletedProcess (text stdout/stderr)."""
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, env=cli_env(env), text=True,
                          capture_output=True, timeout=timeout)


@pytest.fixture
def run_cli():
    """``run_cli("train", "tiny.yaml", "--set", ...)`` -> CompletedProcess."""
    return run_cli_subprocess


def require(module: str):
    """Import an optional test dependency (torch, onnxruntime, tensorboard, mpi4py, ...).

    Outside CI a missing one skips the test, so the suite runs on a bare install. In CI
    (``CI=true``, as .ci/run is started) it fails instead: .ci/run installs every extra the
    tests need, and a failed install must not turn comparison tests into silent skips.
    """
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        import importlib

        try:
            return importlib.import_module(module)
        except ImportError as err:
            pytest.fail(f"CI: optional test dependency {module!r} is not installed ({err}); "
                        ".ci/run must install it", pytrace=False)
    return pytest.importorskip(module)


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.slow`` tests run only when selected: ``python -m pytest -m slow``."""
    markexpr = config.option.markexpr or ""
    if "slow" in markexpr and "not slow" not in markexpr:
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
