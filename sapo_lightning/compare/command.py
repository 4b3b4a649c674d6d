"""The ``sapo-lightning compare`` command: check a study, run its cells, write its report."""

from __future__ import annotations

import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

from sapo_lightning.checks import ConfigError
from sapo_lightning.compare.report import BAND, ENTROPY, PLOT_HINT, plot_task, table, write_csv
from sapo_lightning.compare.runner import check_cell, run_cells
from sapo_lightning.compare.stats import RunSummary, final_values, summarise_run
from sapo_lightning.compare.study import check_study, compose_cells, resolve_objective

DESCRIPTION = "run a study (objectives x seeds x tasks, a YAML like configs/studies/*.yaml) and summarise it"


def compare(
    name: str,
    tasks: dict[str, dict[str, Any]],
    objectives: dict[str, dict[str, Any]],
    seeds: list[int] = [0, 1, 2, 3, 4],  # noqa: B006 (jsonargparse shows it in --help)
    overrides: dict[str, Any] | None = None,
    threshold: float = 0.5,
    margin: float = 0.1,
    window: int = 5,
    metric: str = "train/reward",
    report: list[str] = [],  # noqa: B006 (jsonargparse shows it in --help)
    workers: int = 2,
    out: str = "lightning_logs/compare",
    overwrite: bool = False,
) -> dict[str, dict[str, list[RunSummary]]]:
    """Run every (task, objective, seed) of a study with ``sapo-lightning fit`` and summarise it.

    Each cell is ``sapo-lightning fit --config <task config> --config <overlay>``: the overlay
    holds the study's overrides, then the task's, then the cell's objective, seed and logger.
    Writes to ``<out>/<name>/``: ``summary.md`` (a table per task, an objective per row, mean ±
    95% CI over seeds), ``runs.csv`` (one row per run, with its command), ``<task>.png``
    (reward, entropy, approx KL, gate/clip fraction, the gate mean where logged and each
    ``report`` tag against step, a line and a band per objective, the band a 95% CI clipped to
    the seeds' min-max; needs the ``plot`` extra),
    ``configs/<task>/<objective>/seed<k>.yaml`` (the overlays), ``runs/`` (the TensorBoard
    logs everything is read from) and ``study.yaml``. Nothing is written, and an existing
    ``<out>/<name>/`` is kept, until the whole study is known to be valid.

    Args:
        name: Study name; the output directory under ``out``.
        tasks: Task name -> ``{config: fit config path (relative to the current directory),
            overrides: {dotted.key: value}}``.
        objectives: Objective name -> ``model.objective`` (``class_path`` and ``init_args``),
            e.g. SAPO at several temperatures, or SAPO against GRPO. A cell runs exactly this
            objective: init_args not given take the class's defaults, not the task config's.
        seeds: ``seed_everything`` of each run (use 5 or more for a confidence interval).
        overrides: Dotted keys set in every cell before the task's own (``trainer.max_steps``,
            ``sync.every_n_steps``, ...).
        threshold: Reward (``metric``) a run must reach for steps-to-threshold.
        margin: A run collapsed if its smoothed reward ends and stays more than ``margin``
            below its running best (>= 0).
        window: Logged points in the trailing mean that smooths every series (>= 1).
        metric: The TensorBoard tag used as reward (``train/reward`` or ``val/reward``).
        report: More TensorBoard tags to report, e.g. ``[val/exact_match]``: each run's last
            logged value, a column each in the table (mean ± 95% CI; "–" where no run logged
            it) and in ``runs.csv``, and a panel each in the plot.
        workers: Parallel worker processes, each running its cells one after another with one
            torch thread (default 2: the machine's cores).
        out: Parent directory of the study's output.
        overwrite: Replace an existing ``<out>/<name>/``; otherwise refuse to touch it.
    """
    overrides = overrides or {}
    check_study(name, tasks, objectives, seeds, overrides, threshold, margin, window, workers, report)
    root = Path(out) / name
    if root.exists() and not overwrite:
        raise ConfigError(f"{root} exists: pass --overwrite true to replace it, or another --name")
    resolved = {objective: resolve_objective(objective, spec) for objective, spec in objectives.items()}
    cells = compose_cells(tasks, resolved, seeds, overrides, root)
    for task in tasks:  # a cell per task parses as a fit config: the objectives were checked above
        check_cell(next(cell for cell in cells if cell.task == task))

    if root.exists():
        shutil.rmtree(root)
    for cell in cells:
        cell.write_overlay()
        cell.log_dir.mkdir(parents=True, exist_ok=True)
    (root / "study.yaml").write_text(yaml.safe_dump({
        "name": name, "tasks": tasks, "objectives": objectives, "seeds": seeds, "overrides": overrides,
        "threshold": threshold, "margin": margin, "window": window, "metric": metric, "report": report,
    }, sort_keys=False))
    print(f"compare {name}: {len(tasks)} task(s) x {len(objectives)} objective(s) x {len(seeds)} seed(s) = "
          f"{len(cells)} runs on {workers} worker(s) -> {root}", flush=True)
    scalars = run_cells(cells, workers, metric)

    results: dict[str, dict[str, list[RunSummary]]] = {}
    series: dict[str, dict[str, list[dict]]] = {}
    rows = []
    for cell in cells:
        s = scalars[cell.label]
        steps, reward = s.get(metric, ([], []))
        run = summarise_run(steps, reward, s.get(ENTROPY, ([], []))[1], threshold, margin, window)
        run = replace(run, reported=final_values(s, report))
        results.setdefault(cell.task, {}).setdefault(cell.objective, []).append(run)
        series.setdefault(cell.task, {}).setdefault(cell.objective, []).append(s)
        rows.append((cell.task, cell.objective, cell.seed, run, str(cell.overlay_path), cell.command))
    write_csv(root / "runs.csv", rows, report)

    try:
        import matplotlib  # noqa: F401

        plots = True
    except ImportError:
        plots = False
    lines = [f"# Study `{name}`", "",
             f"{len(seeds)} seeds per cell; reward = `{metric}`, smoothed by a trailing mean over {window} log "
             f"points; threshold {threshold}; collapse margin {margin}. Mean ± 95% CI (Student t) over seeds. "
             "Steps are optimizer steps (TensorBoard steps: each value is logged at the step it follows).", ""]
    if report:
        lines += ["Final " + ", ".join(f"`{tag}`" for tag in report) + ": each run's last logged value.", ""]
    if plots:
        lines += [f"Plots: {BAND}.", ""]
    for task, by_objective in results.items():
        lines += [f"## {task}", "", *table(by_objective, report), ""]
        if plots:
            plot_task(task, series[task], metric, root / f"{task}.png", report)
            lines += [f"![{task}]({task}.png)", ""]
    if not plots:
        lines += [f"No plots: {PLOT_HINT}", ""]
    lines += ["Rerun any cell alone, from the directory the study ran in (every cell's command is in runs.csv), "
              "e.g.:", "", f"    {cells[0].command}", ""]
    (root / "summary.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if not plots:
        print(PLOT_HINT, flush=True)
    return results


def parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sapo-lightning compare", description=DESCRIPTION[0].upper() + DESCRIPTION[1:] + ".",
                            exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="The study YAML.")
    parser.add_function_arguments(compare, as_group=False)
    return parser


def main(args: list[str] | None = None) -> None:
    """Entry point of ``sapo-lightning compare``; bad input -> one line on stderr, exit 2, nothing written."""
    try:
        config = parser().parse_args(args)
        compare(**{k: v for k, v in vars(config).items() if k != "config"})
    except (ConfigError, ArgumentError) as err:
        message = " ".join(str(err).split())
        print(f"sapo-lightning compare: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
