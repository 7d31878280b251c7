"""Run a script under real ``mpiexec`` from the tests, importing this checkout's pnode, with a timeout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKERS = os.path.join(REPO, "tests", "mpi_workers")


def environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "1")   # P ranks on a few cores: one thread each
    return env


def mpiexec(n: int, args: list[str], timeout: float, **kwargs) -> subprocess.CompletedProcess:
    """``mpiexec -n n python args...`` (plain ``python args...`` for n=1); fails the test on a timeout,
    which is how a hang shows up."""
    launcher = shutil.which("mpiexec")
    if n > 1 and launcher is None:
        pytest.skip("mpiexec not found on PATH")
    command = ([launcher, "-n", str(n)] if n > 1 else []) + [sys.executable, *args]
    try:
        return subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=timeout,
                              **kwargs)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{' '.join(command)} did not finish in {timeout}s (a hang?)\n{expired.stdout}\n{expired.stderr}")


def check(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\n"
                                  f"stderr:\n{proc.stderr[-3000:]}")
