"""Shared fixtures: the repository's paths and one graded class reused by several tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python -m autograder ...`` as an instructor runs it; fails the test on a non-zero exit."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, "-m", "autograder", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"autograder {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def assert_no_process(pattern: str) -> None:
    """Fail when a process whose command line matches ``pattern`` is still alive (SIGKILLed
    processes get a few seconds to leave /proc)."""
    import time

    for _ in range(50):
        leftovers = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout
        if not leftovers.strip():
            return
        time.sleep(0.2)
    raise AssertionError(f"a process outlived its grading: {pattern!r} (pids {leftovers.split()})")


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session", autouse=True)
def checkpoint_cache(tmp_path_factory) -> Path:
    """The tests' own checkpoint cache: quick-mode lecture models never land in (or load from)
    the user's ``~/.cache/genlab``.  Notebook kernels inherit the environment variable."""
    from genlab.checkpoints import CACHE_ENV

    folder = tmp_path_factory.mktemp("genlab-checkpoints")
    previous = os.environ.get(CACHE_ENV)
    os.environ[CACHE_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(CACHE_ENV, None)
    else:
        os.environ[CACHE_ENV] = previous
