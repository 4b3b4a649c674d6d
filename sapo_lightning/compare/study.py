"""A study's fields checked, and each (task, objective, seed) cell as ``sapo-lightning fit`` arguments.

A cell is ``fit --config <task's base config> --config <overlay>``: LightningCLI composes it.
The overlay is a flat YAML of dotted keys: the study's overrides, then the task's, then the
cell's own values (``model.objective``, ``seed_everything``, the logger).
"""

from __future__ import annotations

import importlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import ArgumentError, ArgumentParser

from sapo_lightning.checks import ConfigError, check_int, check_number, fail
from sapo_lightning.objectives import Objective

#: Keys every cell sets itself; overrides may not touch them.
CELL_KEYS = ("model.objective", "seed_everything", "trainer.logger", "trainer.enable_progress_bar")
LOGGER = "lightning.pytorch.loggers.TensorBoardLogger"


@dataclass
class Cell:
    task: str
    objective: str
    seed: int
    base: Path  # the task's fit config
    overlay: dict[str, Any]  # dotted key -> value, applied after ``base``
    overlay_path: Path
    log_dir: Path  # TensorBoard logger save_dir/name

    @property
    def label(self) -> str:
        return f"{self.task}/{self.objective}/seed{self.seed}"

    @property
    def args(self) -> list[str]:
        """The ``sapo-lightning`` arguments that run this cell."""
        return ["fit", "--config", str(self.base), "--config", str(self.overlay_path)]

    @property
    def command(self) -> str:
        return shlex.join(["sapo-lightning", *self.args])

    def write_overlay(self) -> None:
        self.overlay_path.parent.mkdir(parents=True, exist_ok=True)
        header = f"# {self.label}: applied after {self.base}. Run: {self.command}\n"
        self.overlay_path.write_text(header + yaml.safe_dump(self.overlay, sort_keys=False))


def check_study(
    name: str, tasks: dict, objectives: dict, seeds: list[int], overrides: dict, threshold: float, margin: float,
    window: int, workers: int, report: list[str],
) -> None:
    """Raise :class:`ConfigError` naming the first field out of its range
    (the objectives: see :func:`resolve_objective`)."""
    if not name or "/" in name or name in (".", ".."):
        fail("name", "a directory name (no '/')", name)
    if not tasks:
        fail("tasks", "a non-empty mapping {name: {config: path, overrides: {dotted.key: value}}}", tasks)
    for task, spec in tasks.items():
        if not isinstance(spec, dict) or "config" not in spec or set(spec) - {"config", "overrides"}:
            fail(f"tasks.{task}", "{config: path, overrides: {dotted.key: value}}", spec)
        if not Path(spec["config"]).is_file():
            fail(f"tasks.{task}.config", "an existing fit config file", spec["config"])
        check_overrides(f"tasks.{task}.overrides", spec.get("overrides") or {})
    check_overrides("overrides", overrides)
    if not objectives:
        fail("objectives", "a non-empty mapping {name: {class_path: ..., init_args: {...}}}", objectives)
    if not seeds or len(set(seeds)) != len(seeds):
        fail("seeds", "a non-empty list of distinct integers", seeds)
    for i, seed in enumerate(seeds):
        check_int(f"seeds[{i}]", seed)
    check_number("threshold", threshold)
    check_number("margin", margin, low=0)
    check_int("window", window, low=1)
    check_int("workers", workers, low=1)
    if not isinstance(report, list) or not all(isinstance(tag, str) and tag for tag in report) \
            or len(set(report)) != len(report):
        fail("report", "a list of distinct TensorBoard scalar tags, e.g. [val/exact_match]", report)


def check_overrides(name: str, overrides: Any) -> None:
    if not isinstance(overrides, dict):
        fail(name, "a mapping {dotted.key: value}", overrides)
    for key in overrides:
        if any(key == k or key.startswith(k + ".") for k in CELL_KEYS):
            fail(f"{name} keys", f"other than {', '.join(CELL_KEYS)} (each cell sets them)", key)


def resolve_objective(name: str, spec: Any) -> dict[str, Any]:
    """The study's ``model.objective`` with every init_arg spelled out: the class's own defaults fill the rest.

    Spelled out in full, it replaces the base config's objective instead of inheriting its
    init_args (LightningCLI keeps the init_args a new class_path shares with the old one).
    The objective is built once here, so a bad value fails before anything runs.
    """
    if not isinstance(spec, dict) or "class_path" not in spec or set(spec) - {"class_path", "init_args"}:
        fail(f"objectives.{name}", "a mapping with a class_path and optional init_args", spec)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--objective", type=Objective)
    try:
        resolved = parser.parse_object({"objective": spec}).objective.as_dict()
        module, _, cls = resolved["class_path"].rpartition(".")
        getattr(importlib.import_module(module), cls)(**resolved.get("init_args", {}))
    except (ArgumentError, ConfigError, TypeError) as err:
        raise ConfigError(f"objectives.{name}: {' '.join(str(err).split())}") from None
    return resolved


def compose_cells(
    tasks: dict, objectives: dict[str, dict], seeds: list[int], overrides: dict, root: Path
) -> list[Cell]:
    """Every (task, objective, seed) of a study whose output is ``root``; ``objectives`` already resolved."""
    cells = []
    for task, spec in tasks.items():
        for objective, objective_spec in objectives.items():
            for seed in seeds:
                log_dir = root / "runs" / task / objective
                overlay = {
                    **overrides,
                    **(spec.get("overrides") or {}),  # the task's own win over the study's
                    "model.objective": objective_spec,
                    "seed_everything": seed,
                    "trainer.enable_progress_bar": False,
                    "trainer.logger": {
                        "class_path": LOGGER, "init_args": {"save_dir": str(log_dir), "name": f"seed{seed}"}},
                }
                path = root / "configs" / task / objective / f"seed{seed}.yaml"
                cells.append(Cell(task, objective, seed, Path(spec["config"]), overlay, path, log_dir / f"seed{seed}"))
    return cells
