"""benchmarks/gpu_check.sh's plumbing, in its CPU dry mode: every check runs, is judged and printed."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,  # seven short fits in subprocesses, two of them with 2 processes (~2 min)
              pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="needs the [hf] extra")]

ROOT = Path(__file__).resolve().parents[1]
CHECKS = ["ddp", "bf16-mixed", "16-mixed", "micro-batch", "fsdp", "lora", "text-demo"]


def test_gpu_check_dry_run_passes_every_check_on_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "GPU_CHECK_DIR": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    results = {line.split()[1]: line.split()[0] for line in lines if line.split()[0] in ("PASS", "FAIL", "SKIP")}
    assert list(results) == CHECKS, done.stdout
    assert results["16-mixed"] == "SKIP"  # needs a GPU
    assert all(results[name] == "PASS" for name in CHECKS if name not in ("16-mixed", "lora")), done.stdout
    ddp = next(line for line in lines if line.startswith("PASS  ddp"))
    assert "2 rank(s)" in ddp and "steps/s" in ddp and "MiB" in ddp
    assert lines[-1] == "gpu_check: all checks passed"


def test_gpu_check_fails_on_a_failing_check(tmp_path):
    """A check whose fit fails prints FAIL and exits 1 (here: an unknown option)."""
    env = {**os.environ, "GPU_CHECK_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "broken", "--",
                           "--config", str(ROOT / "configs" / "sapo.yaml"), "--trainer.max_steps=2",
                           "--model.no_such=1"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stdout.startswith("FAIL  broken"), done.stdout + done.stderr
