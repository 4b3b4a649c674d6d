"""The study's report: a Markdown table per task, ``runs.csv`` and a plot per task."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from sapo_lightning.compare.stats import RunSummary, mean_ci, seed_band

ENTROPY, APPROX_KL = "train/entropy", "train/approx_kl"
SOFT_CLIP, CLIP_LOW, CLIP_HIGH = "train/soft_clip_frac", "train/clip_frac_low", "train/clip_frac_high"
GATE = "train/gate_mean"
CSV_FIELDS = ("task", "objective", "seed", "steps_to_threshold", "final", "best", "collapse_step", "final_entropy",
              "config", "command")
#: What a plot's band is; the plot's title and summary.md say it.
BAND = "mean over seeds, band: 95% CI clipped to the seeds' min-max at each step"
PLOT_HINT = "plots need matplotlib: pip install 'sapo-lightning[plot]'"


def fmt(mean: float, half: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "–"
    if not math.isfinite(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def table(rows: dict[str, list[RunSummary]], report: list[str]) -> list[str]:
    """One Markdown table: a row per objective, mean ± 95% CI over its seeds; a column per ``report`` tag."""
    lines = [
        "| objective | reached | steps to threshold | final reward | best reward | collapses | final entropy |"
        + "".join(f" final {tag} |" for tag in report),
        "|---|---|---|---|---|---|---|" + "---|" * len(report),
    ]
    for objective, runs in rows.items():
        n = len(runs)
        reached = [r.steps_to_threshold for r in runs if math.isfinite(r.steps_to_threshold)]
        lines.append(
            f"| {objective} | {len(reached)}/{n} | {fmt(*mean_ci(reached), 0)} "
            f"| {fmt(*mean_ci([r.final for r in runs]), 3)} | {fmt(*mean_ci([r.best for r in runs]), 3)} "
            f"| {sum(r.collapsed for r in runs)}/{n} | {fmt(*mean_ci([r.final_entropy for r in runs]), 3)} |"
            + "".join(f" {fmt(*mean_ci([r.reported[tag] for r in runs]), 3)} |" for tag in report)
        )
    return lines


def write_csv(path: Path, rows: list[tuple[str, str, int, RunSummary, str, str]], report: list[str]) -> None:
    """One row per run: (task, objective, seed, summary, its overlay config, the command that reruns it).

    After those, a column per ``report`` tag (named by the tag): the run's last logged value.
    """
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*CSV_FIELDS, *report])
        for task, objective, seed, r, config, command in rows:
            writer.writerow([task, objective, seed, r.steps_to_threshold, r.final, r.best, r.collapse_step,
                             r.final_entropy, config, command, *(r.reported[tag] for tag in report)])


def clip_fraction(scalars: dict) -> tuple[list[int], list[float]] | None:
    """SAPO's soft-clip fraction (w < 0.5), else clip_frac_low + clip_frac_high (disjoint token sets)."""
    if SOFT_CLIP in scalars:
        return scalars[SOFT_CLIP]
    if CLIP_LOW in scalars and CLIP_HIGH in scalars:
        (steps, low), (_, high) = scalars[CLIP_LOW], scalars[CLIP_HIGH]
        return steps, [a + b for a, b in zip(low, high)]
    return None


def logged_once(series: dict[str, list[dict]], tag: str) -> bool:
    """Whether every run that logged ``tag`` logged it at one step only (a validation at the end, say)."""
    curves = [s[tag] for runs in series.values() for s in runs if tag in s]
    return bool(curves) and all(len(steps) == 1 for steps, _ in curves)


def draw_final(ax, series: dict[str, list[dict]], tag: str) -> None:
    """A tag logged once per run: a dot per objective at its mean over seeds, a bar of its 95% CI, the value
    written above it; objectives along the x axis (the numbers of the summary table's ``final`` column)."""
    for index, (objective, runs) in enumerate(series.items()):
        mean, half = mean_ci([s[tag][1][-1] for s in runs if tag in s])
        if not math.isfinite(mean):
            continue
        ax.errorbar([index], [mean], yerr=[half] if math.isfinite(half) else None, fmt="o", capsize=4,
                    color=f"C{index % 10}", label=objective)
        ax.annotate(fmt(mean, half, 3), (index, mean), xytext=(0, 8), textcoords="offset points", ha="center",
                    va="bottom", bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8})
    ax.set_xticks(range(len(series)), list(series), rotation=20, ha="right")
    ax.set_xlim(-0.5, len(series) - 0.5)


def figure(task: str, series: dict[str, list[dict]], metric: str, report: list[str]):
    """The task's matplotlib figure (see :func:`plot_task`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(metric, metric), (ENTROPY, "entropy"), (APPROX_KL, "approx KL"),
              ("clip", "soft clip (w<0.5) / clip fraction")]
    if any(GATE in s for runs in series.values() for s in runs):
        panels.append((GATE, "gate mean"))
    shown = {tag for tag, _ in panels} | {SOFT_CLIP}  # SAPO's soft-clip fraction is the clip panel's
    panels += [(tag, tag) for tag in report if tag not in shown]
    rows = math.ceil(len(panels) / 4)
    fig, axes = plt.subplots(rows, 4, figsize=(18, 4 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (tag, title) in zip(axes.flat, panels):
        if logged_once(series, tag):
            draw_final(ax, series, tag)
            ax.set_title(f"{title}, final: mean ± 95% CI")
            continue
        for index, (objective, runs) in enumerate(series.items()):
            curves = [clip_fraction(s) if tag == "clip" else s.get(tag) for s in runs]
            steps, mean, low, high = seed_band([c for c in curves if c])
            if not steps:
                continue
            color = f"C{index % 10}"  # an objective's colour in every panel, also where others did not log the tag
            # val/* tags hold a point per validation only: markers keep a short series visible
            ax.plot(steps, mean, label=objective, color=color, marker="o" if len(steps) <= 20 else None)
            ax.fill_between(steps, low, high, color=color, alpha=0.2)
        if not ax.lines:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("step")
    axes.flat[0].legend()
    fig.suptitle(f"{task}: {BAND}")
    fig.tight_layout()
    return fig


def plot_task(task: str, series: dict[str, list[dict]], metric: str, path: Path, report: list[str]) -> None:
    """Reward, entropy, approx KL, clip fraction, the SAPO gate mean (where logged) and each ``report`` tag
    against step: a line and a band (:data:`BAND`) per objective, four panels a row. A tag every run logged
    once is a dot per objective with its 95% CI (:func:`draw_final`); a report of ``train/soft_clip_frac``
    adds no panel, the clip panel shows it."""
    import matplotlib.pyplot as plt

    fig = figure(task, series, metric, report)
    fig.savefig(path, dpi=100)
    plt.close(fig)
