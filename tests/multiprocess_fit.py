"""``sapo-lightning fit`` in a subprocess, for the multi-process (DDP, FSDP) tests.

In-process ``ddp_spawn`` aborts at gloo teardown now and then, so those runs get a process of their
own; the tests directory is on its PYTHONPATH so that the probes (``rank_probe``, ``shard_probe``)
load as callbacks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIT = [sys.executable, "-m", "sapo_lightning", "fit"]


def fit_env(**variables: str) -> dict[str, str]:
    """This process's environment with tests/ on PYTHONPATH, one torch thread, and ``variables``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", **variables}


def run_fit(cwd: Path, *args: str, status: int = 0) -> str:
    """Run ``sapo-lightning fit ARGS`` in ``cwd`` with one torch thread per process; fail with its stderr unless
    it exits with ``status`` and no rank aborted; its stderr."""
    done = subprocess.run([*FIT, *args], cwd=cwd, env=fit_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == status and "terminate called" not in done.stderr, done.stderr[-3000:]
    return done.stderr
