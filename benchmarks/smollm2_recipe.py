"""The SmolLM2 recipe's figures: strict and lenient greedy accuracy per seed, before and after, and the plot.

    sapo-lightning validate --config configs/smollm2_arithmetic.yaml --trainer.default_root_dir=runs/base
    sapo-lightning fit --config configs/smollm2_arithmetic.yaml --seed_everything=S --trainer.default_root_dir=runs/sS
    python benchmarks/smollm2_recipe.py runs/base runs/s0 runs/s1 runs/s2 --plot docs/smollm2_arithmetic.png
    python benchmarks/smollm2_recipe.py rg/base rg/s0 rg/s1 rg/s2 --strict val/exact_match --lenient val/reward \
        --title "reasoning-gym basic_arithmetic" --plot docs/smollm2_reasoning_gym.png

Reads each run's TensorBoard events (every version under the directory: a resumed run continues its
first). Strict accuracy is ``--strict`` (default ``val/accuracy/numeric_answer``: the final number is
the sum), lenient ``--lenient`` (default ``val/accuracy/number_anywhere``: the sum appears anywhere).
Minutes count from each version's ``config.yaml``, written once the model is loaded, to each event;
the plot needs the ``[plot]`` extra.
Events are logged at the optimizer step they follow (validation after step 10 at 10).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

STRICT, LENIENT = "val/accuracy/numeric_answer", "val/accuracy/number_anywhere"
TITLE = "two-digit addition (configs/smollm2_arithmetic.yaml)"


def read(run: Path) -> dict[str, list[tuple[int, float, float]]]:
    """tag -> [(step, minutes of training, value)] of the run under ``run``.

    A run resumed with ``--ckpt_path`` (a new version beside the first) is read as one: the versions in
    order, each one's minutes counted from its own ``config.yaml`` and added to the minutes of those
    before it (the restart's start-up is left out), a step logged again by a later version taking the
    later value.
    """
    versions = sorted((run / "lightning_logs").iterdir(), key=lambda p: int(p.name.split("_")[-1]))
    series: dict[str, dict[int, tuple[float, float]]] = {}
    offset = 0.0
    for version in versions:
        start = (version / "config.yaml").stat().st_mtime
        events = EventAccumulator(str(version))
        events.Reload()
        last = start
        for tag in events.Tags()["scalars"]:
            for e in events.Scalars(tag):
                series.setdefault(tag, {})[e.step] = (offset + (e.wall_time - start) / 60, e.value)
                last = max(last, e.wall_time)
        offset += (last - start) / 60
    return {tag: [(step, *points[step]) for step in sorted(points)] for tag, points in series.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("base", type=Path, help="the validate run of the untrained model")
    parser.add_argument("runs", type=Path, nargs="+", help="the fit runs, one per seed")
    parser.add_argument("--plot", type=Path, help="write accuracy and train/reward against step and minutes here")
    parser.add_argument("--strict", default=STRICT, help="the validation tag read as strict accuracy")
    parser.add_argument("--lenient", default=LENIENT, help="the validation tag read as lenient accuracy")
    parser.add_argument("--title", default=TITLE, help="the task, in the plot's title")
    args = parser.parse_args()
    base = read(args.base)
    strict0, lenient0 = base[args.strict][-1][2], base[args.lenient][-1][2]
    print(f"base model: strict {strict0:.3f}, lenient {lenient0:.3f}")
    print("| run | strict at each validation | lenient at each validation | strict gain | lenient gain "
          "| entropy first -> last | minutes to the last validation |")
    print("|---|---|---|---|---|---|---|")
    runs = {run: read(run) for run in args.runs}
    for run, tags in runs.items():
        strict, lenient, entropy = tags[args.strict], tags[args.lenient], tags["train/entropy"]
        print(f"| {run.name} | {' / '.join(f'{v:.3f}' for *_, v in strict)} | "
              f"{' / '.join(f'{v:.3f}' for *_, v in lenient)} | {100 * (strict[-1][2] - strict0):+.1f} points | "
              f"{100 * (lenient[-1][2] - lenient0):+.1f} points | {entropy[0][2]:.2f} -> {entropy[-1][2]:.2f} | "
              f"{strict[-1][1]:.1f} |")
    if args.plot:
        plot(runs, (args.strict, strict0), (args.lenient, lenient0), args.plot, args.title)


def plot(runs: dict[Path, dict], strict: tuple[str, float], lenient: tuple[str, float], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharey="row")
    for column, (x, label) in enumerate(((0, "optimizer step"), (1, "minutes of training"))):
        top, bottom = axes[0][column], axes[1][column]
        for index, (run, tags) in enumerate(runs.items()):
            color = f"C{index}"
            for (tag, before), style, name in ((strict, "-", "strict"), (lenient, ":", "lenient")):
                points = [(0.0, before)] + [(p[x], p[2]) for p in tags[tag]]
                top.plot(*zip(*points), style, marker="o", color=color, label=f"{run.name} {name}")
            reward = tags["train/reward"]
            bottom.plot([p[x] for p in reward], [p[2] for p in reward], color=color, label=run.name)
        top.set_title(f"greedy validation accuracy against {label}")
        bottom.set_title(f"train/reward (sampled, T = 1) against {label}")
        bottom.set_xlabel(label)
    axes[0][0].set_ylabel("greedy accuracy (validation prompts)")
    axes[1][0].set_ylabel("mean reward of 64 completions")
    axes[0][0].legend(fontsize=7, ncol=2)
    axes[1][0].legend(fontsize=7)
    fig.suptitle(f"SAPO on SmolLM2-135M-Instruct, {title}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
