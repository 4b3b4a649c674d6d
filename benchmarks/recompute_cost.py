"""What ``model.recompute_old_log_probs`` costs: seconds per step of ``sapo-lightning fit`` without and with it.

    python benchmarks/recompute_cost.py                              # configs/hf_tiny.yaml, 100 steps, 3 runs a side
    python benchmarks/recompute_cost.py --bf16 --steps 60 --runs 2   # the same under configs/bf16.yaml

Each run is a fresh process (one torch thread) that times ``fit`` alone, start-up excluded, without
validation or checkpoints. The sides alternate (A B B A ...) so that load from other processes falls on
both. Prints each run and the median ms per step of each side, in wall time and in the process's CPU time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = r"""
import sys, tempfile, time
from sapo_lightning.cli import main
sys.argv = ["sapo-lightning"]
start, cpu = time.perf_counter(), time.process_time()
main(["fit", *{args!r}, "--trainer.default_root_dir", tempfile.mkdtemp()])
print("SECONDS", time.perf_counter() - start, time.process_time() - cpu)
"""
SIDES = {"sampled old log-probs": "false", "recompute_old_log_probs": "true"}


def run(args: list[str], steps: int) -> tuple[float, float]:
    """(wall, CPU) milliseconds per step of one fit with ``args``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", RUN.format(args=args)], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    seconds = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("SECONDS")]
    if not seconds:
        raise SystemExit(f"fit failed:\n{out.stderr[-3000:]}")
    wall, cpu = (float(x) / steps * 1000 for x in seconds[0])
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/hf_tiny.yaml")
    parser.add_argument("--bf16", action="store_true", help="add configs/bf16.yaml (bf16-mixed)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3, help="runs per side")
    args = parser.parse_args()
    base = ["--config", args.config, *(["--config", "configs/bf16.yaml"] if args.bf16 else []),
            f"--trainer.max_steps={args.steps}", "--trainer.limit_val_batches=0",
            "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false", "--threads=1"]
    times: dict[str, list[tuple[float, float]]] = {side: [] for side in SIDES}
    print(f"load average {os.getloadavg()[0]:.2f}", flush=True)
    for i in range(args.runs):
        for side in (list(SIDES) if i % 2 == 0 else list(reversed(SIDES))):
            wall, cpu = run([*base, f"--model.recompute_old_log_probs={SIDES[side]}"], args.steps)
            times[side].append((wall, cpu))
            print(f"run {i + 1} {side}: {wall:.1f} ms/step wall, {cpu:.1f} ms/step CPU", flush=True)
    medians = {side: [statistics.median(t[j] for t in values) for j in (0, 1)] for side, values in times.items()}
    (wall_a, cpu_a), (wall_b, cpu_b) = medians.values()
    print(f"\nmedian ms/step: {wall_a:.1f} -> {wall_b:.1f} wall ({wall_b / wall_a:.2f}x), "
          f"{cpu_a:.1f} -> {cpu_b:.1f} CPU ({cpu_b / cpu_a:.2f}x); load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
