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


def run_fit(cwd: Path, *args: str, status: int = 0) -> str:
    """Run ``sapo-lightning fit ARGS`` in ``cwd`` with one torch thread per process; fail with its stderr unless
    it exits with ``status``; its stderr."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "sapo_lightning", "fit", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    # gloo's threads now and then abort a process at its teardown, after the fit and its checkpoints are done;
    # the test then judges what the run wrote
    torn_down = "`Trainer.fit` stopped" in done.stderr and done.stderr.rstrip().endswith(
        "terminate called without an active exception")
    assert done.returncode == status or (status == 0 and torn_down), done.stderr[-3000:]
    return done.stderr
