"""``sapo-lightning compare``: run objectives x seeds x tasks and summarise what each objective did.

A study is a YAML file (see ``configs/studies/``)::

    name: temperature                     # output under <out>/<name>/
    tasks:                                # task name -> base fit config + dotted overrides
      mlp: {config: configs/sapo.yaml, overrides: {data.task.init_args.vocab_size: 50}}
    objectives:                           # objective name -> model.objective (class_path, init_args)
      sapo: {class_path: sapo_lightning.objectives.SAPO}
    seeds: [0, 1, 2, 3, 4]
    overrides: {trainer.max_steps: 300}   # dotted keys applied to every cell, before the task's
    threshold: 0.5                        # reward a run must reach (steps-to-threshold)
    margin: 0.1                           # collapse margin below the running best

Every cell (task, objective, seed) is the base config with the study's overrides, then the
task's, then ``model.objective`` and ``seed_everything``; it is written to
``configs/<task>/<objective>/seed<k>.yaml`` and run by ``sapo-lightning fit --config`` in a pool
of worker processes (each runs its cells one after another, one torch thread each), logging to
TensorBoard under ``runs/<task>/<objective>/seed<k>/``. The summary is read back from those
event files only.

Definitions (per run, on the logged series x_k of ``metric`` at TensorBoard steps t_k, each
already the mean over the steps since the previous log point):

- s_k: trailing mean of the last ``window`` logged values; B_k = max_{i<=k} s_i, its running best.
- steps to threshold: the first t_k with s_k >= ``threshold``; runs that never reach it are
  counted in ``reached`` and left out of the mean.
- final / best reward: s at the last log point / max_k s_k.
- collapse: from some log point on the run stays more than ``margin`` below its running best,
  s_j < B_j − margin for every later j, up to the end. A run collapsed iff final < best − margin;
  its collapse step is the first t_k from which that holds.
- final entropy: the trailing mean of ``train/entropy`` at the last log point.

Each table cell is the mean ± the 95% Student-t confidence half-width over seeds.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import math
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ActionConfigFile, ArgumentError, ArgumentParser

from sapo_lightning.checks import ConfigError

#: Two-sided 95% Student-t quantiles t_{0.975, df} for df = 1..30.
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
    2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)
Z975 = 1.959964
ENTROPY, APPROX_KL = "train/entropy", "train/approx_kl"
SOFT_CLIP, CLIP_LOW, CLIP_HIGH = "train/soft_clip_frac", "train/clip_frac_low", "train/clip_frac_high"
PLOT_HINT = "plots need matplotlib: pip install 'sapo-lightning[plot]'"


# -- statistics ------------------------------------------------------------------------------
def t_quantile(df: int) -> float:
    """t_{0.975, df}: table up to 30, Cornish-Fisher expansion beyond (error < 1e-3)."""
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean and 95% confidence half-width t_{0.975, n−1} · sd / √n (NaN where undefined)."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, t_quantile(len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))


def trailing_mean(values: Sequence[float], window: int) -> list[float]:
    """s_k = mean(values[k−window+1 .. k]), over fewer values at the start."""
    return [statistics.fmean(values[max(0, k - window + 1) : k + 1]) for k in range(len(values))]


@dataclass
class RunSummary:
    """What one run's logged reward and entropy say (see the module docstring)."""

    steps_to_threshold: float  # NaN: never reached
    final: float
    best: float
    collapse_step: float  # NaN: no collapse
    final_entropy: float

    @property
    def collapsed(self) -> bool:
        return math.isfinite(self.collapse_step)


def summarise_run(
    steps: Sequence[int], reward: Sequence[float], entropy: Sequence[float], threshold: float, margin: float, window: int
) -> RunSummary:
    """Summary of one run from its logged reward (and entropy) series."""
    if not reward:
        return RunSummary(math.nan, math.nan, math.nan, math.nan, math.nan)
    s = trailing_mean(reward, window)
    running_best = [max(s[: k + 1]) for k in range(len(s))]
    reached = next((steps[k] for k, v in enumerate(s) if v >= threshold), math.nan)
    collapse = math.nan
    for k in reversed(range(len(s))):  # walk back while the run stays below its running best
        if s[k] < running_best[k] - margin:
            collapse = steps[k]
        else:
            break
    final_entropy = trailing_mean(entropy, window)[-1] if entropy else math.nan
    return RunSummary(reached, s[-1], max(s), collapse, final_entropy)


# -- the study -------------------------------------------------------------------------------
@dataclass
class Cell:
    task: str
    objective: str
    seed: int
    config: Path  # the exact fit config
    log_dir: Path  # TensorBoard logger save_dir/name

    @property
    def label(self) -> str:
        return f"{self.task}/{self.objective}/seed{self.seed}"


def set_dotted(config: dict, key: str, value: Any) -> None:
    """``config["a"]["b"]["c"] = value`` for ``key="a.b.c"``, creating the dicts on the way."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[leaf] = copy.deepcopy(value)


def build_cells(
    tasks: dict, objectives: dict, seeds: list[int], overrides: dict, root: Path
) -> list[tuple[Cell, dict]]:
    """Every (task, objective, seed) with its full fit config."""
    cells = []
    for task, spec in tasks.items():
        base_path = Path(spec["config"])
        if not base_path.is_file():
            raise ConfigError(f"tasks.{task}.config must be an existing fit config; got {str(base_path)!r}")
        base = yaml.safe_load(base_path.read_text())
        for objective, objective_spec in objectives.items():
            for seed in seeds:
                config = copy.deepcopy(base)
                for key, value in {**overrides, **(spec.get("overrides") or {})}.items():
                    set_dotted(config, key, value)
                set_dotted(config, "model.objective", objective_spec)
                config["seed_everything"] = seed
                log_dir = root / "runs" / task / objective
                set_dotted(config, "trainer.enable_progress_bar", False)
                set_dotted(config, "trainer.logger", {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": str(log_dir), "name": f"seed{seed}"},
                })
                path = root / "configs" / task / objective / f"seed{seed}.yaml"
                cells.append((Cell(task, objective, seed, path, log_dir / f"seed{seed}"), config))
    return cells


def check_study(tasks: dict, objectives: dict, seeds: list[int], threshold: float, margin: float, window: int,
                workers: int) -> None:
    if not tasks:
        raise ConfigError("tasks must name at least one task: {name: {config: path, overrides: {...}}}")
    for task, spec in tasks.items():
        if not isinstance(spec, dict) or "config" not in spec or set(spec) - {"config", "overrides"}:
            raise ConfigError(f"tasks.{task} must be {{config: path, overrides: {{...}}}}; got {spec!r}")
    if not objectives:
        raise ConfigError("objectives must name at least one objective: {name: {class_path: ..., init_args: ...}}")
    for objective, spec in objectives.items():
        if not isinstance(spec, dict) or "class_path" not in spec:
            raise ConfigError(f"objectives.{objective} must have a class_path; got {spec!r}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be a non-empty list of distinct integers; got {seeds!r}")
    if not math.isfinite(threshold):
        raise ConfigError(f"threshold must be a finite number; got {threshold!r}")
    if not (math.isfinite(margin) and margin >= 0):
        raise ConfigError(f"margin must be a finite number >= 0; got {margin!r}")
    if window < 1:
        raise ConfigError(f"window must be an integer >= 1; got {window!r}")
    if workers < 1:
        raise ConfigError(f"workers must be an integer >= 1; got {workers!r}")


# -- running ---------------------------------------------------------------------------------
@contextlib.contextmanager
def redirect_output(path: str | Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors and Python streams) to ``path``."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "w") as log:
        os.dup2(log.fileno(), 1), os.dup2(log.fileno(), 2)
        try:
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
                yield
        finally:
            sys.stdout.flush(), sys.stderr.flush()
            os.dup2(saved[0], 1), os.dup2(saved[1], 2)
            os.close(saved[0]), os.close(saved[1])


def _init_worker(threads: int, spawned: bool = True) -> None:
    import torch

    torch.set_num_threads(threads)
    if spawned:  # the parent's `compare ...` argv is no concern of the fits (LightningCLI would warn)
        del sys.argv[1:]


def fit_cell(config: str, log_file: str) -> tuple[float, str | None]:
    """``sapo-lightning fit --config config`` in this process; returns (seconds, error or None)."""
    from sapo_lightning.cli import main

    start = time.perf_counter()
    error = None
    with redirect_output(log_file):
        try:
            main(["fit", "--config", config])
        except (Exception, SystemExit) as err:  # one failed cell must not stop the study
            error = f"{type(err).__name__}: {err}"
    return time.perf_counter() - start, error


def read_scalars(log_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Every scalar tag of the newest ``version_*`` under ``log_dir``: tag -> (steps, values)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    versions = sorted(log_dir.glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    if not versions:
        return {}
    events = EventAccumulator(str(versions[-1]), size_guidance={"scalars": 0})
    events.Reload()
    scalars = {}
    for tag in events.Tags()["scalars"]:
        points = events.Scalars(tag)
        scalars[tag] = ([p.step for p in points], [p.value for p in points])
    return scalars


def clip_fraction(scalars: dict) -> tuple[list[int], list[float]] | None:
    """SAPO's soft-clip fraction (w < 0.5), else clip_frac_low + clip_frac_high (disjoint token sets)."""
    if SOFT_CLIP in scalars:
        return scalars[SOFT_CLIP]
    if CLIP_LOW in scalars and CLIP_HIGH in scalars:
        (steps, low), (_, high) = scalars[CLIP_LOW], scalars[CLIP_HIGH]
        return steps, [a + b for a, b in zip(low, high)]
    return None


# -- reporting -------------------------------------------------------------------------------
def fmt(mean: float, half: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "–"
    if not math.isfinite(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def table(rows: dict[str, list[RunSummary]]) -> list[str]:
    """One Markdown table: a row per objective, mean ± 95% CI over its seeds."""
    lines = [
        "| objective | reached | steps to threshold | final reward | best reward | collapses | final entropy |",
        "|---|---|---|---|---|---|---|",
    ]
    for objective, runs in rows.items():
        n = len(runs)
        reached = [r.steps_to_threshold for r in runs if math.isfinite(r.steps_to_threshold)]
        lines.append(
            f"| {objective} | {len(reached)}/{n} | {fmt(*mean_ci(reached), 0)} "
            f"| {fmt(*mean_ci([r.final for r in runs]), 3)} | {fmt(*mean_ci([r.best for r in runs]), 3)} "
            f"| {sum(r.collapsed for r in runs)}/{n} | {fmt(*mean_ci([r.final_entropy for r in runs]), 3)} |"
        )
    return lines


def plot_task(task: str, series: dict[str, list[dict]], metric: str, path: Path) -> None:
    """Reward, entropy, approx KL and clip fraction against step: mean line and 95% CI band per objective."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(metric, metric), (ENTROPY, "entropy"), (APPROX_KL, "approx KL"),
              ("clip", "soft clip (w<0.5) / clip fraction")]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, (tag, title) in zip(axes, panels):
        for objective, runs in series.items():
            curves = [clip_fraction(s) if tag == "clip" else s.get(tag) for s in runs]
            curves = [c for c in curves if c]
            if not curves:
                continue
            common = sorted(set.intersection(*(set(steps) for steps, _ in curves)))
            at = [dict(zip(steps, values)) for steps, values in curves]
            stats = [mean_ci([a[t] for a in at]) for t in common]
            mean = [m for m, _ in stats]
            half = [h if math.isfinite(h) else 0.0 for _, h in stats]
            (line,) = ax.plot(common, mean, label=objective)
            ax.fill_between(common, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)],
                            color=line.get_color(), alpha=0.2)
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[0].legend()
    fig.suptitle(f"{task}: mean and 95% CI over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the command -----------------------------------------------------------------------------
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
    workers: int = 2,
    out: str = "lightning_logs/compare",
    overwrite: bool = False,
) -> dict[str, dict[str, list[RunSummary]]]:
    """Run every (task, objective, seed) of a study with ``sapo-lightning fit`` and summarise it.

    Writes to ``<out>/<name>/``: ``summary.md`` (a table per task, an objective per row, mean ±
    95% CI over seeds), ``runs.csv`` (one row per run), ``<task>.png`` (reward, entropy, approx
    KL and gate/clip fraction against step, a band per objective; needs the ``plot`` extra),
    ``configs/<task>/<objective>/seed<k>.yaml`` (rerun any cell alone with ``sapo-lightning fit
    --config`` on it) and ``runs/`` (the TensorBoard logs everything is read from).

    Args:
        name: Study name; the output directory under ``out``.
        tasks: Task name -> ``{config: fit config path (relative to the current directory),
            overrides: {dotted.key: value}}``.
        objectives: Objective name -> ``model.objective`` of the fit config (``class_path`` and
            ``init_args``), e.g. SAPO at several temperatures, or SAPO against GRPO.
        seeds: ``seed_everything`` of each run (use 5 or more for a confidence interval).
        overrides: Dotted keys set in every cell before the task's own (``trainer.max_steps``,
            ``sync.every_n_steps``, ...).
        threshold: Reward (``metric``) a run must reach for steps-to-threshold.
        margin: A run collapsed if its smoothed reward ends and stays more than ``margin``
            below its running best (>= 0).
        window: Logged points in the trailing mean that smooths every series (>= 1).
        metric: The TensorBoard tag used as reward (``train/reward`` or ``val/reward``).
        workers: Parallel worker processes, each running its cells one after another with one
            torch thread (default 2: the machine's cores).
        out: Parent directory of the study's output.
        overwrite: Replace an existing ``<out>/<name>/``; otherwise refuse to touch it.
    """
    overrides = overrides or {}
    check_study(tasks, objectives, seeds, threshold, margin, window, workers)
    root = Path(out) / name
    if root.exists() and not overwrite:
        raise ConfigError(f"{root} exists: pass --overwrite true to replace it, or another --name")
    cells = build_cells(tasks, objectives, seeds, overrides, root)  # refuses a missing base config
    if root.exists():
        shutil.rmtree(root)
    for cell, config in cells:
        cell.config.parent.mkdir(parents=True, exist_ok=True)
        cell.config.write_text(yaml.safe_dump(config, sort_keys=False))
        cell.log_dir.mkdir(parents=True, exist_ok=True)
    (root / "study.yaml").write_text(yaml.safe_dump({
        "name": name, "tasks": tasks, "objectives": objectives, "seeds": seeds, "overrides": overrides,
        "threshold": threshold, "margin": margin, "window": window, "metric": metric,
    }, sort_keys=False))

    print(f"compare {name}: {len(tasks)} task(s) x {len(objectives)} objective(s) x {len(seeds)} seed(s) = "
          f"{len(cells)} runs on {workers} worker(s) -> {root}", flush=True)
    scalars = run_cells([cell for cell, _ in cells], workers, metric)

    results: dict[str, dict[str, list[RunSummary]]] = {}
    series: dict[str, dict[str, list[dict]]] = {}
    with open(root / "runs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["task", "objective", "seed", "steps_to_threshold", "final", "best", "collapse_step",
                         "final_entropy", "config"])
        for cell, _ in cells:
            s = scalars[cell.label]
            steps, reward = s.get(metric, ([], []))
            run = summarise_run(steps, reward, s.get(ENTROPY, ([], []))[1], threshold, margin, window)
            results.setdefault(cell.task, {}).setdefault(cell.objective, []).append(run)
            series.setdefault(cell.task, {}).setdefault(cell.objective, []).append(s)
            writer.writerow([cell.task, cell.objective, cell.seed, run.steps_to_threshold, run.final, run.best,
                             run.collapse_step, run.final_entropy, cell.config])

    try:
        import matplotlib  # noqa: F401

        plots = True
    except ImportError:
        plots = False
    lines = [f"# Study `{name}`", "",
             f"{len(seeds)} seeds per cell; reward = `{metric}`, smoothed by a trailing mean over {window} log "
             f"points; threshold {threshold}; collapse margin {margin}. Mean ± 95% CI (Student t) over seeds. "
             "Steps are TensorBoard steps (training batches).", ""]
    for task, rows in results.items():
        lines += [f"## {task}", "", *table(rows), ""]
        if plots:
            plot_task(task, series[task], metric, root / f"{task}.png")
            lines += [f"![{task}]({task}.png)", ""]
    if not plots:
        lines += [f"No plots: {PLOT_HINT}", ""]
    first = cells[0][0]
    lines += ["Rerun any cell alone, e.g.:", "", f"    sapo-lightning fit --config {first.config}", ""]
    (root / "summary.md").write_text("\n".join(lines))
    print("\n".join(lines))
    if not plots:
        print(PLOT_HINT, flush=True)
    return results


def run_cells(cells: list[Cell], workers: int, metric: str) -> dict[str, dict]:
    """Run every cell (in this process when ``workers`` is 1) with a progress line per finished run."""
    start = time.perf_counter()
    scalars: dict[str, dict] = {}

    def report(cell: Cell, seconds: float, error: str | None) -> None:
        scalars[cell.label] = read_scalars(cell.log_dir)
        done, elapsed = len(scalars), time.perf_counter() - start
        eta = elapsed / done * (len(cells) - done)
        reward = scalars[cell.label].get(metric, ([], [math.nan]))[1]
        status = f"FAILED ({error}; see {cell.log_dir / 'fit.log'})" if error else f"last {metric} {reward[-1]:.3f}"
        print(f"[{done}/{len(cells)}] {cell.label}: {seconds:.0f} s, {status}; eta {eta / 60:.1f} min", flush=True)

    if workers == 1:
        _init_worker(1, spawned=False)
        for cell in cells:
            report(cell, *fit_cell(str(cell.config), str(cell.log_dir / "fit.log")))
        return scalars
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(fit_cell, str(c.config), str(c.log_dir / "fit.log")): c for c in cells}
        for future in as_completed(futures):
            report(futures[future], *future.result())
    return scalars


def parser() -> ArgumentParser:
    parser = ArgumentParser(
        prog="sapo-lightning compare",
        description="Run a grid of objectives x seeds x tasks (a study YAML, see configs/studies/) and write "
        "tables, plots and the exact configs to <out>/<name>/.",
        exit_on_error=False,
    )
    parser.add_argument("--config", action=ActionConfigFile, help="The study YAML.")
    parser.add_function_arguments(compare, as_group=False)
    return parser


def main(args: list[str] | None = None) -> None:
    """Entry point of ``sapo-lightning compare``; bad input -> one line on stderr, exit 2."""
    try:
        p = parser()
        config = p.parse_args(args)
        kwargs = {k: v for k, v in vars(config).items() if k != "config"}
        compare(**kwargs)
    except (ConfigError, ArgumentError) as err:
        message = " ".join(str(err).split())
        print(f"sapo-lightning compare: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
