"""Checks of user input, in one message style: ``NAME must be REQUIREMENT; got VALUE``.

Every constructor that takes a value from a config validates it here, so a bad value stops
the command before anything is written, and the CLI prints the message as one line with
exit status 2. ``NAME`` is the option as the user spells it (``tau_neg``, ``data.batch_size``).
"""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class ConfigError(ValueError):
    """A configuration value is out of its allowed range; the message names the option and the range."""


class RunFailed(RuntimeError):
    """A run stopped mid-way for a reason the user can act on (a reward function or an environment raised, the
    loss diverged): the CLI prints the message as one line and exits 1; the checkpoints written so far stay."""


def fail(name: str, requirement: str, value: Any) -> None:
    """Raise the one-line error ``NAME must be REQUIREMENT; got VALUE``."""
    raise ConfigError(f"{name} must be {requirement}; got {value!r}")


def _range(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return ""


def check_int(name: str, value: Any, low: int | None = None, high: int | None = None, allow_none: bool = False) -> Any:
    """An integer (not a bool) in [low, high]; None passes when ``allow_none``."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool)
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        fail(name, " ".join(filter(None, ["an integer", _range(low, high, False, False), "or null" * allow_none])),
             value)
    return value


def check_number(
    name: str,
    value: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_none: bool = False,
) -> Any:
    """A finite real number in the range (open or closed at each end); returned as float."""
    if value is None and allow_none:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        requirement = ["a finite number", _range(low, high, low_open, high_open), "or null" * allow_none]
        fail(name, " ".join(filter(None, requirement)), value)
    return float(value)


def check_positive(name: str, value: Any, allow_none: bool = False) -> Any:
    """A finite number > 0."""
    return check_number(name, value, low=0, low_open=True, allow_none=allow_none)


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """One of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        fail(name, f"one of {', '.join(map(str, choices))}", value)
    return value


def check_schedule(
    max_steps: int, batch_size: int | None, updates_per_rollout: int, mini_batches: int, group_size: int,
    micro_batch_size: int | None,
) -> None:
    """Refuse mini-batches that do not split a rollout batch's queries, micro-batches that do not tile a
    mini-batch's responses (``batch_size`` None: not known yet, not checked), and a run length that
    splits a rollout batch."""
    if batch_size is not None and batch_size % mini_batches:
        fail("model.mini_batches", f"a divisor of data.batch_size={batch_size} (a mini-batch holds whole groups)",
             mini_batches)
    if batch_size is not None and micro_batch_size is not None:
        responses = batch_size * group_size // mini_batches
        where = (f"the batch's {responses} responses (data.batch_size={batch_size} x model.group_size={group_size})"
                 if mini_batches == 1 else f"a mini-batch's {responses} responses (data.batch_size={batch_size} x "
                 f"model.group_size={group_size} / model.mini_batches={mini_batches})")
        if responses % micro_batch_size:
            fail("model.micro_batch_size", f"a divisor of {where}", micro_batch_size)
    steps = updates_per_rollout * mini_batches
    if max_steps > 0 and max_steps % steps:
        fail("trainer.max_steps", f"a multiple of {steps}, the optimizer steps a rollout batch makes "
             f"(model.updates_per_rollout={updates_per_rollout} x model.mini_batches={mini_batches})", max_steps)


def check_optimizer(optimizer: Callable[[list[torch.nn.Parameter]], torch.optim.Optimizer]) -> None:
    """Build the optimizer once on a dummy parameter, so that a bad ``lr`` fails before any run starts."""
    import torch  # here: the commands that only check paths and numbers stay free of its import

    try:
        probe = optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as err:
        hint = " (lr must be a finite number > 0)" if "learning rate" in str(err) else ""
        raise ConfigError(f"optimizer: {err}{hint}") from None
    for group in probe.param_groups:
        if group.get("lr") is not None:
            check_positive("lr", float(group["lr"]))


def missing_path(option: str, path: str | os.PathLike, what: str = "file") -> None:
    """Raise the one-line error for a path that does not exist; a relative one names the working
    directory it was resolved from (the usual cause: the command was run from another directory)."""
    where = "" if os.path.isabs(path) else f" (relative to the working directory {os.getcwd()})"
    raise ConfigError(f"{option}: no such {what} {os.fspath(path)}{where}")


def removed(old: str, new: str, version: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` under which the class name ``old`` (removed) is a one-line :class:`ConfigError`
    naming ``new``, its replacement, and the ``version`` in which ``old`` goes away: a config that names it
    fails as it is parsed."""
    module, _, name = old.rpartition(".")

    def __getattr__(attribute: str) -> Any:
        if attribute == name:
            raise ConfigError(f"{old} is removed (the name goes away in sapo-lightning {version}): use {new}, "
                              "the one policy for token and text tasks, with the same init_args")
        raise AttributeError(f"module {module!r} has no attribute {attribute!r}")

    return __getattr__


def resolve_import(option: str, path: Any) -> Any:
    """The object at the dotted import path ``path`` (``module.attribute``, ``module.Class.attribute``), or a
    one-line ConfigError naming ``option`` and what failed."""
    parts = path.split(".") if isinstance(path, str) else []
    if len(parts) < 2 or not all(part.isidentifier() for part in parts):
        fail(option, "a dotted import path 'module.attribute'", path)
    for split in range(len(parts) - 1, 0, -1):  # the longest prefix that is a module
        module_name = ".".join(parts[:split])
        try:
            target = importlib.import_module(module_name)
            break
        except ModuleNotFoundError as err:
            if err.name is None or not (module_name + ".").startswith(err.name + "."):
                raise ConfigError(f"{option} must be importable; got {path!r}, whose module {module_name} "
                                  f"fails to import: ModuleNotFoundError: {err}") from None
        except Exception as err:  # the module exists but importing it fails
            message = " ".join(str(err).split())
            raise ConfigError(f"{option} must be importable; got {path!r}, whose module {module_name} "
                              f"fails to import: {type(err).__name__}: {message}") from None
    else:
        raise ConfigError(f"{option} must be an importable path 'module.attribute'; got {path!r}: "
                          f"no module named {parts[0]!r}")
    for depth, attribute in enumerate(parts[split:]):
        if not hasattr(target, attribute):
            owner = ".".join(parts[:split + depth])
            if depth == 0 and split + 1 < len(parts):  # tried as a module too
                problem = f"no module named {owner + '.' + attribute!r}"
            else:
                problem = f"{owner} has no attribute {attribute!r}"
            raise ConfigError(f"{option} must be an importable path 'module.attribute'; got {path!r}: {problem}")
        target = getattr(target, attribute)
    if not callable(target):
        raise ConfigError(f"{option} must name a callable; got {path!r}, a {type(target).__name__}")
    return target
