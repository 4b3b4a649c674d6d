"""A real-model recipe in float32, bf16 and bf16 with recompute: seconds per step and the sampling/update mismatch.

    python benchmarks/precision_recipe.py                                  # configs/smollm2_arithmetic.yaml, 6 steps
    python benchmarks/precision_recipe.py --steps 8 --runs 2 --threads 2

Sides: ``float32`` (the config as it is), ``bf16`` (with ``configs/bf16.yaml``: bf16-mixed, decoding and
update under bf16 autocast, attention ``grouped``), ``bf16 + recompute`` (also
``model.recompute_old_log_probs=true``), and the overlay with another attention kernel,
``bf16, eager attention`` or ``bf16, sdpa attention`` (``model.policy.init_args.attention``). Each
run is a fresh ``sapo-lightning fit`` process (no validation, no checkpoints) with ``--threads``
torch threads; the sides alternate (A B C D D C B A ...) so that load from other processes falls on all.
From each run's TensorBoard events: seconds per step (the wall time between the ``train/reward``
events of steps 2 .. end: the first step's warm-up is left out), the mean ``train/mismatch_kl`` and
``train/mismatch_ratio_outside`` over its steps (the k3 KL between the log-probs stored at sampling
and those the update computes for the same tokens, and the share of tokens whose ratio is outside
[0.9, 1.1], on the first mini-batch of each rollout) and the mean ``train/reward``. With recompute
the update's ratio on that mini-batch is exactly 1; the two metrics still compare sampling against
the update, so they read what recompute corrects.
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
SIDES = {"float32": [], "bf16": ["--config", "configs/bf16.yaml"],
         "bf16 + recompute": ["--config", "configs/bf16.yaml", "--model.recompute_old_log_probs=true"],
         "bf16, eager attention": ["--config", "configs/bf16.yaml", "--model.policy.init_args.attention=eager"],
         "bf16, sdpa attention": ["--config", "configs/bf16.yaml", "--model.policy.init_args.attention=sdpa"]}
TAGS = ["train/mismatch_kl", "train/mismatch_ratio_outside", "train/reward"]


def run(config: str, side: list[str], steps: int, threads: int) -> dict[str, float]:
    """One fit of ``config`` with ``side``'s options; its seconds per step and mean metrics."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with tempfile.TemporaryDirectory() as root:
        command = [sys.executable, "-m", "sapo_lightning", "fit", "--config", config, *side,
                   f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0", "--trainer.log_every_n_steps=1",
                   "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
                   f"--trainer.default_root_dir={root}", f"--threads={threads}"]
        env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
        out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"fit failed (exit {out.returncode}): {' '.join(command)}\n{out.stderr[-3000:]}")
        (version,) = (Path(root) / "lightning_logs").iterdir()
        events = EventAccumulator(str(version))
        events.Reload()
        series = {tag: events.Scalars(tag) for tag in TAGS}
    times = [e.wall_time for e in series["train/reward"]]
    result = {tag.split("/")[-1]: statistics.mean(e.value for e in series[tag]) for tag in TAGS}
    return result | {"s_per_step": (times[-1] - times[0]) / (len(times) - 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/smollm2_arithmetic.yaml")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps per run (at least 3)")
    parser.add_argument("--runs", type=int, default=1, help="runs per side")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sides", nargs="+", choices=list(SIDES), default=list(SIDES), metavar="SIDE",
                        help=f"which sides to run, of: {', '.join(SIDES)}")
    args = parser.parse_args()
    if args.steps < 3:
        parser.error(f"--steps must be at least 3; got {args.steps}")
    print(f"{args.config}, {args.steps} steps per run, {args.threads} thread(s); "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[str, list[dict[str, float]]] = {side: [] for side in args.sides}
    for i in range(args.runs):
        for side in (args.sides if i % 2 == 0 else list(reversed(args.sides))):
            results[side].append(run(args.config, SIDES[side], args.steps, args.threads))
            r = results[side][-1]
            print(f"run {i + 1} {side}: {r['s_per_step']:.2f} s/step, mismatch_kl {r['mismatch_kl']:.3g}, "
                  f"outside {r['mismatch_ratio_outside']:.3%}, reward {r['reward']:.3f}", flush=True)
    base = statistics.mean(r["s_per_step"] for r in results[args.sides[0]])
    print(f"\nload average after {os.getloadavg()[0]:.2f}; mean over {args.runs} run(s) per side\n")
    print(f"| precision | s / step | vs {args.sides[0]} | train/mismatch_kl | train/mismatch_ratio_outside "
          "| train/reward |\n|---|---|---|---|---|---|")
    for side, runs in results.items():
        mean = {key: statistics.mean(r[key] for r in runs) for key in runs[0]}
        print(f"| {side} | {mean['s_per_step']:.2f} | {mean['s_per_step'] / base:.2f}x | {mean['mismatch_kl']:.3g} | "
              f"{mean['mismatch_ratio_outside']:.3%} | {mean['reward']:.3f} |")


if __name__ == "__main__":
    main()
