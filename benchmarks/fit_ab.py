"""Seconds per step of ``sapo-lightning fit`` for this tree against an earlier commit, alternating A and B.

    python benchmarks/fit_ab.py REV                     # 3000 steps of configs/sapo.yaml, 6 runs per side
    python benchmarks/fit_ab.py REV --steps 1000 --runs 4 --config configs/transformer.yaml

Each run is a fresh process (one torch thread) that times ``fit`` alone, start-up excluded, with
everything the config turns on (logging, validation, checkpoints, progress bar to /dev/null).
The earlier commit runs from ``git archive REV``; the sides alternate (A B B A A B ...) so that
load from other processes falls on both. Prints each run and the mean and median ms per step, in wall
time and in CPU time of the process (less moved by other processes' load, blind to waiting on fsync).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = r"""
import sys, tempfile, time
from sapo_lightning.cli import main
sys.argv = ["sapo-lightning"]
root = tempfile.mkdtemp()
start, cpu = time.perf_counter(), time.process_time()
main(["fit", "--config", {config!r}, "--trainer.max_steps={steps}", "--trainer.default_root_dir", root])
print("SECONDS", time.perf_counter() - start, time.process_time() - cpu)
"""


def run(tree: Path, config: str, steps: int) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
    code = RUN.format(config=config, steps=steps)
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, capture_output=True, text=True)
    seconds = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("SECONDS")]
    if not seconds:
        raise SystemExit(f"fit failed in {tree}:\n{out.stderr[-3000:]}")
    wall, cpu = (float(x) / steps * 1000 for x in seconds[0])
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rev", help="the earlier commit (B); A is the working tree")
    parser.add_argument("--config", default="configs/sapo.yaml")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--runs", type=int, default=6, help="runs per side")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as before:
        archive = subprocess.run(["git", "archive", args.rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", before], input=archive, check=True)
        sides = {"this tree": ROOT, args.rev: Path(before)}
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
        print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
        for i in range(args.runs):
            order = list(sides) if i % 2 == 0 else list(reversed(sides))
            for name in order:
                times[name].append(run(sides[name], args.config, args.steps))
                print(f"{name}: {times[name][-1][0]:.3f} ms/step wall, {times[name][-1][1]:.3f} CPU", flush=True)
        print(f"load average {os.getloadavg()[0]:.2f}")
        for name, values in times.items():
            for i, clock in enumerate(("wall", "CPU")):
                v = [x[i] for x in values]
                print(f"{name}: {clock} mean {statistics.mean(v):.3f}, median {statistics.median(v):.3f} ms/step "
                      f"over {len(v)} runs of {args.steps} steps")


if __name__ == "__main__":
    main()
