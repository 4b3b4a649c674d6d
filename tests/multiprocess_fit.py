"""``sapo-lightning fit`` in a subprocess (or one per node), for the multi-process (DDP, FSDP) tests.

In-process ``ddp_spawn`` aborts at gloo teardown now and then, so those runs get a process of their
own; the tests directory is on its PYTHONPATH so that the probes (``rank_probe``, ``shard_probe``)
load as callbacks.
"""

from __future__ import annotations

import os
import socket
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


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_nodes(cwd: Path, nodes: int, *args: str) -> list[str]:
    """Run ``sapo-lightning fit ARGS --trainer.num_nodes=NODES`` once per node on localhost, as on a cluster
    without a launcher: each process is told the main node's address and port, its NODE_RANK and the
    WORLD_SIZE (``nodes`` x ``trainer.devices``, which ARGS must give); fail unless every node exits 0
    with no abort; their stderrs (kept in ``cwd/node<N>.err``)."""
    devices = int(next(a.split("=", 1)[1] for a in args if a.startswith("--trainer.devices=")))
    shared = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": str(nodes * devices)}
    logs = [cwd / f"node{node}.err" for node in range(nodes)]
    procs = []
    for node, log in enumerate(logs):
        with log.open("w") as err:  # a file, not a pipe: a full pipe would stall its node, and the others with it
            procs.append(subprocess.Popen([*FIT, *args, f"--trainer.num_nodes={nodes}"], cwd=cwd, stderr=err,
                                          stdout=subprocess.DEVNULL, env=fit_env(**shared, NODE_RANK=str(node))))
    try:
        for proc in procs:
            proc.wait(timeout=300)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    errs = [log.read_text() for log in logs]
    for node, (proc, err) in enumerate(zip(procs, errs)):
        assert proc.returncode == 0 and "terminate called" not in err, f"node {node}: {err[-3000:]}"
    return errs
