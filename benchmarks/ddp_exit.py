"""How 2-process DDP runs end: repeats a short CPU (gloo) fit N times and counts clean exits and aborts.

    python benchmarks/ddp_exit.py                      # 5 finished runs and 5 non-finite stops
    python benchmarks/ddp_exit.py --runs 10 --cases finished

``finished``: a fit that reaches max_steps, expected to exit 0. ``nonfinite``: rank 1's gradient is inf at
steps 3 and 4 with ``model.max_nonfinite_steps=2``, so both ranks stop at step 4, expected to exit 1.
A run is clean when it exits with the expected status and no rank printed ``terminate called`` (a C++
abort, exit -6) or ran past ``--timeout`` seconds (a rank left waiting). Each run is a fresh
``python -m sapo_lightning fit`` with one torch thread per process, as tests/multiprocess_fit.py runs it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = [f"--config={ROOT / 'configs' / 'sapo.yaml'}", f"--config={ROOT / 'configs' / 'ddp.yaml'}",
        "--trainer.enable_progress_bar=false", "--data.val_size=8"]
CASES = {
    "finished": (0, ["--trainer.max_steps=6", "--trainer.val_check_interval=6"]),
    "nonfinite": (1, ["--trainer.max_steps=6", "--trainer.val_check_interval=6", "--model.max_nonfinite_steps=2",
                      "--trainer.callbacks+=test_nonfinite.InfGradient", "--trainer.callbacks.steps=[3, 4]",
                      "--trainer.callbacks.rank=1"]),
}


def run(case: str, timeout: float) -> tuple[str, int | None]:
    """One 2-process fit of ``case``: its outcome (clean, abort, status, hang) and rank 0's exit status."""
    expected, args = CASES[case]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as root:
        command = [sys.executable, "-m", "sapo_lightning", "fit", *BASE, f"--trainer.default_root_dir={root}", *args]
        # its own session, so that a hung run's ranks (rank 0 starts rank 1) are killed together
        proc = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            return "hang", None
    if "terminate called" in err:
        return "abort", proc.returncode
    return ("clean" if proc.returncode == expected else "status"), proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds before a run counts as hung")
    args = parser.parse_args()
    print("| case | run | outcome | rank 0 exit |\n|---|---|---|---|")
    counts: dict[str, dict[str, int]] = {}
    for case in args.cases:
        for i in range(args.runs):
            outcome, status = run(case, args.timeout)
            counts.setdefault(case, {}).setdefault(outcome, 0)
            counts[case][outcome] += 1
            print(f"| {case} | {i + 1} | {outcome} | {status} |", flush=True)
    for case, outcomes in counts.items():
        print(f"{case}: " + ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items()))
              + f" of {args.runs}")


if __name__ == "__main__":
    main()
