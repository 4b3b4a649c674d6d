"""Every benchmark answers --help: a rename or a moved import cannot break one silently."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # every script imported once, in a subprocess

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

# One interpreter runs every script's --help in turn (torch is imported once), each as __main__.
RUNNER = """
import runpy, sys
failed = []
for path in sys.argv[1:]:
    sys.argv = [path, "--help"]
    try:
        runpy.run_path(path, run_name="__main__")
        failed.append(f"{path}: no exit")
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            failed.append(f"{path}: exit {exit_.code}")
    except Exception as err:
        failed.append(f"{path}: {type(err).__name__}: {err}")
print("FAILED " + " | ".join(failed) if failed else "OK")
"""


def test_every_benchmark_answers_help():
    scripts = sorted(str(p) for p in BENCHMARKS.glob("*.py"))
    assert len(scripts) >= 20
    done = subprocess.run([sys.executable, "-c", RUNNER, *scripts], capture_output=True, text=True, timeout=300,
                          cwd=BENCHMARKS)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "OK", done.stdout[-3000:]
    assert done.stdout.count("usage:") + done.stdout.count("python benchmarks/") >= len(scripts)


def test_the_check_sees_a_broken_benchmark(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("import sapo_lightning.no_such_module\n")
    done = subprocess.run([sys.executable, "-c", RUNNER, str(broken)], capture_output=True, text=True, timeout=60)
    assert done.stdout.startswith("FAILED") and "ModuleNotFoundError" in done.stdout
