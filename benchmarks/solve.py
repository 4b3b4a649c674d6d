"""Steps and wall time for a shipped config to solve its task, as a user runs it.

    python benchmarks/solve.py configs/sapo.yaml [more configs...] [--repeats 3]
    python benchmarks/solve.py configs/sapo.yaml+configs/objectives/grpo.yaml   # a base and its overlay

Runs ``sapo-lightning fit --config CONFIG`` (one ``--config`` per ``+``-joined file) in a fresh process
(imports and start-up included, as a user sees it), then reads the TensorBoard events: the first validation
step with ``val/exact_match`` = 1.0 and the final value. Prints one Markdown row per config.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def run(config: str) -> tuple[float, int | None, float]:
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "sapo_lightning", "fit", *(f"--config={part}" for part in config.split("+")),
             "--trainer.default_root_dir", root,
             "--trainer.enable_progress_bar=false"],
            check=True, capture_output=True,
        )
        wall = time.perf_counter() - start
        (events,) = Path(root).glob("lightning_logs/version_0/events.out.tfevents.*")
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        exact = [(e.step, e.value) for e in accumulator.Scalars("val/exact_match")]
    solved = next((step + 1 for step, value in exact if value == 1.0), None)  # logged at step S-1 after S steps
    return wall, solved, exact[-1][1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()}; torch {torch.__version__}; "
          f"load average {os.getloadavg()[0]:.2f} at start")
    print("| config | optimizer steps to val/exact_match = 1.0 | final val/exact_match "
          "| wall time, median of runs (s) |")
    print("|---|---|---|---|")
    for config in args.configs:
        results = [run(config) for _ in range(args.repeats)]
        walls = [wall for wall, _, _ in results]
        print(f"| {config} | {results[0][1]} | {results[0][2]:.3f} | {statistics.median(walls):.1f} "
              f"(min {min(walls):.1f}, max {max(walls):.1f}) |")


if __name__ == "__main__":
    main()
