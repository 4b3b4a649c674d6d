"""Running cells: ``sapo-lightning fit`` in worker processes, and their TensorBoard scalars read back."""

from __future__ import annotations

import contextlib
import io
import math
import multiprocessing
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import yaml

from sapo_lightning.checks import ConfigError
from sapo_lightning.compare.study import Cell

Scalars = dict[str, tuple[list[int], list[float]]]  # tag -> (steps, values)


def check_cell(cell: Cell) -> None:
    """Parse the cell as ``sapo-lightning fit`` would (``--print_config``: nothing runs or is written)."""
    from sapo_lightning import cli  # Lightning, imported once a study has passed the checks that need none

    args = ["fit", "--config", str(cell.base), "--config", yaml.safe_dump(cell.overlay), "--print_config"]
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            cli.main(args)
        except SystemExit as exit_:
            if exit_.code:
                lines = err.getvalue().strip().splitlines() or [f"exit status {exit_.code}"]
                message = lines[-1].removeprefix("sapo-lightning: error: ")
                raise ConfigError(f"tasks.{cell.task} does not compose into a fit config: {message}") from None


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


def init_worker(threads: int, spawned: bool = True) -> None:
    import torch

    torch.set_num_threads(threads)
    if spawned:  # the parent's `compare ...` argv is no concern of the fits (LightningCLI would warn)
        del sys.argv[1:]


def fit_cell(args: list[str], log_file: str) -> tuple[float, str | None]:
    """``sapo-lightning *args`` in this process; returns (seconds, error or None)."""
    from sapo_lightning import cli

    start = time.perf_counter()
    error = None
    with redirect_output(log_file):
        try:
            cli.main(args)
        except (Exception, SystemExit) as err:  # one failed cell must not stop the study
            error = f"{type(err).__name__}: {err}"
    return time.perf_counter() - start, error


def read_scalars(log_dir: Path) -> Scalars:
    """Every scalar tag of the newest ``version_*`` under ``log_dir``."""
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


def run_cells(cells: list[Cell], workers: int, metric: str) -> dict[str, Scalars]:
    """Run every cell (in this process when ``workers`` is 1) with a progress line per finished run;
    label -> scalars."""
    start = time.perf_counter()
    scalars: dict[str, Scalars] = {}

    def report(cell: Cell, seconds: float, error: str | None) -> None:
        scalars[cell.label] = read_scalars(cell.log_dir)
        done, elapsed = len(scalars), time.perf_counter() - start
        eta = elapsed / done * (len(cells) - done)
        reward = scalars[cell.label].get(metric, ([], [math.nan]))[1]
        status = f"FAILED ({error}; see {cell.log_dir / 'fit.log'})" if error else f"last {metric} {reward[-1]:.3f}"
        print(f"[{done}/{len(cells)}] {cell.label}: {seconds:.0f} s, {status}; eta {eta / 60:.1f} min", flush=True)

    if workers == 1:
        init_worker(1, spawned=False)
        for cell in cells:
            report(cell, *fit_cell(cell.args, str(cell.log_dir / "fit.log")))
        return scalars
    threads = max(1, (os.cpu_count() or 1) // workers)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker, initargs=(threads,)) as pool:
        futures = {pool.submit(fit_cell, c.args, str(c.log_dir / "fit.log")): c for c in cells}
        for future in as_completed(futures):
            report(futures[future], *future.result())
    return scalars
