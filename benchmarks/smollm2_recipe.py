"""The SmolLM2 recipe's figures: strict and lenient greedy accuracy per seed, before and after, and the plot.

    sapo-lightning validate --config configs/smollm2_arithmetic.yaml --trainer.default_root_dir=runs/base
    sapo-lightning fit --config configs/smollm2_arithmetic.yaml --seed_everything=S --trainer.default_root_dir=runs/sS
    python benchmarks/smollm2_recipe.py runs/base runs/s0 runs/s1 runs/s2 --plot docs/smollm2_arithmetic.png

Reads each run's TensorBoard events (the newest version under the directory). Strict accuracy is
``val/accuracy/numeric_answer`` (the final number is the sum), lenient ``val/accuracy/number_anywhere``
(the sum appears anywhere). Minutes count from the run's ``config.yaml``, written once the model is
loaded, to each event; the plot needs the ``[plot]`` extra.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

STRICT, LENIENT = "val/accuracy/numeric_answer", "val/accuracy/number_anywhere"


def read(run: Path) -> dict[str, list[tuple[int, float, float]]]:
    """tag -> [(step, minutes since the run started, value)] of the newest version under ``run``."""
    version = max((run / "lightning_logs").iterdir(), key=lambda p: int(p.name.split("_")[-1]))
    start = (version / "config.yaml").stat().st_mtime
    events = EventAccumulator(str(version))
    events.Reload()
    return {tag: [(e.step, (e.wall_time - start) / 60, e.value) for e in events.Scalars(tag)]
            for tag in events.Tags()["scalars"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="the validate run of the untrained model")
    parser.add_argument("runs", type=Path, nargs="+", help="the fit runs, one per seed")
    parser.add_argument("--plot", type=Path, help="write accuracy and train/reward against step and minutes here")
    args = parser.parse_args()
    base = read(args.base)
    strict0, lenient0 = base[STRICT][-1][2], base[LENIENT][-1][2]
    print(f"base model: strict {strict0:.3f}, lenient {lenient0:.3f}")
    print("| run | strict at each validation | lenient at each validation | strict gain | lenient gain "
          "| entropy first -> last | minutes to the last validation |")
    print("|---|---|---|---|---|---|---|")
    runs = {run: read(run) for run in args.runs}
    for run, tags in runs.items():
        strict, lenient, entropy = tags[STRICT], tags[LENIENT], tags["train/entropy"]
        print(f"| {run.name} | {' / '.join(f'{v:.3f}' for *_, v in strict)} | "
              f"{' / '.join(f'{v:.3f}' for *_, v in lenient)} | {100 * (strict[-1][2] - strict0):+.1f} points | "
              f"{100 * (lenient[-1][2] - lenient0):+.1f} points | {entropy[0][2]:.2f} -> {entropy[-1][2]:.2f} | "
              f"{strict[-1][1]:.1f} |")
    if args.plot:
        plot(runs, strict0, lenient0, args.plot)


def plot(runs: dict[Path, dict], strict0: float, lenient0: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharey="row")
    for column, (x, label) in enumerate(((0, "optimizer step"), (1, "minutes of training"))):
        top, bottom = axes[0][column], axes[1][column]
        for index, (run, tags) in enumerate(runs.items()):
            color = f"C{index}"
            for tag, style, name in ((STRICT, "-", "strict"), (LENIENT, ":", "lenient")):
                points = [(0.0, strict0 if tag == STRICT else lenient0)] + [(p[x] + (x == 0), p[2]) for p in tags[tag]]
                top.plot(*zip(*points), style, marker="o", color=color, label=f"{run.name} {name}")
            reward = tags["train/reward"]
            bottom.plot([p[x] + (x == 0) for p in reward], [p[2] for p in reward], color=color, label=run.name)
        top.set_title(f"greedy validation accuracy against {label}")
        bottom.set_title(f"train/reward (sampled, T = 1) against {label}")
        bottom.set_xlabel(label)
    axes[0][0].set_ylabel("accuracy (256 prompts)")
    axes[1][0].set_ylabel("mean reward of 64 completions")
    axes[0][0].legend(fontsize=7, ncol=2)
    axes[1][0].legend(fontsize=7)
    fig.suptitle("SAPO on SmolLM2-135M-Instruct, two-digit addition (configs/smollm2_arithmetic.yaml)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
