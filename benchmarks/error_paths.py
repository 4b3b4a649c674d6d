"""Wall time of the commands' error paths, this tree against another checkout of the project, alternating.

    git archive OLD_COMMIT | tar -x -C /tmp/before        # the tree to compare with
    python benchmarks/error_paths.py --before /tmp/before --repeats 4

Each run is a fresh ``python -m sapo_lightning`` process with ``PYTHONPATH`` set to one tree, in a temporary
working directory, its output discarded; the sides alternate (A B B A ...) so that other load falls on
both. Prints per case the mean seconds and the range of each side, and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "--help": ["--help"],
    "export, no such checkpoint": ["export", "--ckpt_path", "nowhere.ckpt", "--output", "out"],
    "compare, no such study": ["compare", "--config", "nowhere.yaml"],
    "fit, tau_neg=-1": ["fit", "--config", str(ROOT / "configs" / "sapo.yaml"),
                        "--model.objective.init_args.tau_neg=-1"],
}


def timed(tree: Path, args: list[str], cwd: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sapo_lightning", *args], env=env, cwd=cwd, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, required=True, help="another checkout of the project")
    parser.add_argument("--repeats", type=int, default=4)
    args = parser.parse_args()
    sides = {"before": args.before.resolve(), "after": ROOT}
    print(f"load average before: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as cwd:
        for case, argv in CASES.items():
            times: dict[str, list[float]] = {side: [] for side in sides}
            for repeat in range(args.repeats):
                for side in list(sides) if repeat % 2 == 0 else list(sides)[::-1]:
                    times[side].append(timed(sides[side], argv, cwd))
            print(f"{case:28s}" + "".join(f"  {side} {statistics.mean(t):5.2f} s ({min(t):.2f}-{max(t):.2f})"
                                         for side, t in times.items()))
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
