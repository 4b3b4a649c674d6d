"""benchmarks/text_rollout.py runs end to end and prints its table (timings are not checked)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow  # a subprocess that builds two models

ROOT = Path(__file__).resolve().parents[1]


def test_the_benchmark_prints_a_row_per_size():
    args = ["--batch", "4", "--new-tokens", "4", "--repeats", "1", "--sizes", "tiny"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "text_rollout.py"), *args], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| tiny |")]
    assert len(rows) == 1 and rows[0].endswith("x |")
    assert "load average" in result.stdout
