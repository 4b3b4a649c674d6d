"""An environment recipe's figures: greedy episode success per seed, at turn 1 and within max_turns, before and after.

    sapo-lightning validate --config configs/smollm2_retry.yaml --trainer.default_root_dir=runs/base
    sapo-lightning fit --config configs/smollm2_retry.yaml --seed_everything=S --trainer.default_root_dir=runs/sS
    python benchmarks/env_recipe.py runs/base runs/s0 runs/s1 runs/s2 --plot docs/smollm2_retry.png

Reads each run's TensorBoard events (the newest version under the directory): ``val/exact_match`` (episodes
whose reward reached the task's success threshold, within max_turns), ``val/solved_turn_1`` (solved at the
first turn), ``val/turns``. Minutes count from the run's ``config.yaml`` to each event; the plot needs the
``[plot]`` extra.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from smollm2_recipe import read  # benchmarks/ is the script's directory

WITHIN, FIRST, TURNS = "val/exact_match", "val/solved_turn_1", "val/turns"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="the validate run of the untrained model")
    parser.add_argument("runs", type=Path, nargs="+", help="the fit runs, one per seed")
    parser.add_argument("--plot", type=Path, help="write success against step and minutes here")
    args = parser.parse_args()
    base = read(args.base)
    within0, first0 = base[WITHIN][-1][2], base[FIRST][-1][2]
    print(f"base: success within max_turns {within0:.3f}, at turn 1 {first0:.3f}, turns {base[TURNS][-1][2]:.2f}")
    print("| run | steps | minutes | at turn 1 | within max_turns | gain (points) | turns |")
    print("|---|---|---|---|---|---|---|")
    runs, gains = {}, []
    for path in args.runs:
        runs[path] = values = read(path)
        step, minutes, within = values[WITHIN][-1]
        gains.append(100 * (within - within0))
        print(f"| {path.name} | {step} | {minutes:.1f} | {first0:.3f} -> {values[FIRST][-1][2]:.3f} | "
              f"{within0:.3f} -> {within:.3f} | {gains[-1]:+.1f} | {values[TURNS][-1][2]:.2f} |")
    spread = f" ± {statistics.stdev(gains):.1f}" if len(gains) > 1 else ""
    print(f"mean gain within max_turns: {statistics.mean(gains):+.1f}{spread} points over {len(gains)} runs")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, (by_step, by_time) = plt.subplots(1, 2, figsize=(11, 4))
        for index, (path, values) in enumerate(runs.items()):
            color = f"C{index}"
            for tag, style, label in ((WITHIN, "-", "within max_turns"), (FIRST, ":", "at turn 1")):
                points = [(0, 0.0, base[tag][-1][2])] + values[tag]
                by_step.plot([p[0] for p in points], [p[2] for p in points], style, color=color,
                             marker="o", label=f"{path.name}, {label}")
                by_time.plot([p[1] for p in points], [p[2] for p in points], style, color=color, marker="o")
        by_step.set(xlabel="optimizer step", ylabel="greedy episode success", title="validation")
        by_time.set(xlabel="minutes", title="against wall time")
        by_step.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
