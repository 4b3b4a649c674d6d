"""Reward functions named by import path: loading, binding columns and args, reading results, the weighted total.

A run lists its reward functions under ``rewards``; each item is a :class:`RewardSpec`::

    rewards:
      - function: sapo_lightning.text.rewards.numeric_answer
        weight: 1.0
      - function: sapo_lightning.text.rewards.regex_format
        weight: 0.1
        args: {pattern: '.*#### -?[0-9]+'}

``function`` is a dotted import path ``module.attribute`` (``my_pkg.rewards.length_penalty``;
``module.Class.attribute`` also works). The module is imported and the callable checked when
:class:`RewardFunctions` is built, before anything runs. The built-ins live in
:mod:`sapo_lightning.text.rewards`; their args are checked here too (an invalid pattern is a
config error).

**Calling.** A reward function is called as ``fn(prompts, completions, **columns)``: two lists of
N strings (``prompts[i]`` is the prompt ``completions[i]`` answers, a prompt repeated for each
completion of its group) and the dataset's other columns, each a list of N values, by name. A
function that takes ``**kwargs`` gets every column; any other gets only the columns its signature
names (a named column the dataset lacks stops the run, unless the parameter has a default).
``args`` are bound as keyword arguments: each must be a parameter the function names (``**kwargs``
takes columns, not args), and a column of the same name is then not passed. Columns called
``prompts`` or ``completions`` are never passed.

**Results.** A function returns N values (a list, tuple, 1-D tensor or 1-D numpy array), one per
completion: a finite number, or None where the reward does not apply. Bools count as numbers
(True is 1.0). Anything else stops the run with a :class:`RewardFunctionError`, one line naming
the function::

    reward function numeric_answer (rewards[0]) raised ValueError: could not convert ...
    reward function numeric_answer (rewards[0]) returned 3 values for 4 completions
    reward function my_reward (rewards[1]) returned 'x' (a str) for completion 2

(completions count from 0).

**Total.** Each function's values are its term ``terms[name]`` (float32 ``[N]``, NaN where None),
logged as ``train/rewards/<name>``. The total reward, from which advantages are computed, is
``total[i] = Σ_f weight_f · term_f[i]`` over the functions that apply to completion ``i``: a
None contributes nothing, and a completion no function applies to gets total 0.
"""

from __future__ import annotations

import inspect
import math
import numbers
import re
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sapo_lightning.checks import ConfigError, RunFailed, check_number, fail, resolve_import
from sapo_lightning.tasks import Rewards
from sapo_lightning.text.rewards import ARG_CHECKS

__all__ = ["RewardFunctionError", "RewardFunctions", "RewardSpec"]


@dataclass
class RewardSpec:
    """One reward function of the total reward (an item of the list ``rewards``).

    Args:
        function: Dotted import path ``module.attribute`` of the reward function, e.g.
            ``sapo_lightning.text.rewards.numeric_answer``.
        weight: Weight of this function's reward in the total (any finite number; 0 only logs it).
        name: Name of the reward in ``train/rewards/<name>``; null: the function's ``__name__``.
        args: Keyword arguments bound to the function, e.g. ``{pattern: '.*#### -?[0-9]+'}``.
    """

    function: str
    weight: float = 1.0
    name: str | None = None
    args: dict[str, Any] | None = None


class RewardFunctionError(RunFailed):
    """A reward function failed or returned something other than N numbers or None; one line naming it."""


class RewardFunctions:
    """The weighted reward functions of a run: ``rewards(prompts, completions, columns) -> Rewards``.

    Args:
        specs: The reward functions (at least one); all are imported and checked here.
    """

    def __init__(self, specs: Sequence[RewardSpec | Mapping[str, Any]]) -> None:
        if isinstance(specs, (str, Mapping)) or not isinstance(specs, Sequence) or not specs:
            fail("rewards", "a list of at least one reward function", specs)
        self._functions = [_Function.build(f"rewards[{i}]", spec) for i, spec in enumerate(specs)]
        seen: dict[str, str] = {}
        for function in self._functions:
            if function.name in seen:
                raise ConfigError(
                    f"{function.option}.name must differ from {seen[function.name]}'s; got {function.name!r}"
                    " (set name to tell them apart)"
                )
            seen[function.name] = function.option
        self.names: list[str] = [function.name for function in self._functions]
        self.weights: list[float] = [function.weight for function in self._functions]

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], columns: Mapping[str, Sequence] | None = None
    ) -> Rewards:
        """Score N completions: ``total`` and ``terms`` (one per function, NaN where it does not apply), on CPU."""
        n = len(completions)
        columns = dict(columns or {})
        if len(prompts) != n:
            raise ValueError(f"rewards need one prompt per completion; got {len(prompts)} prompts for {n} completions")
        for key, values in columns.items():
            if len(values) != n:
                raise ValueError(f"column {key!r} must hold one value per completion; got {len(values)} for {n}")
        total = torch.zeros(n, dtype=torch.float64)
        terms: dict[str, torch.Tensor] = {}
        for function in self._functions:
            term = torch.tensor(function(list(prompts), list(completions), columns), dtype=torch.float64)
            total += torch.where(term.isnan(), 0.0, function.weight * term)
            terms[function.name] = term.float()
        return Rewards(total.float(), terms)

    def __repr__(self) -> str:
        return f"RewardFunctions({', '.join(f'{w:g}·{n}' for n, w in zip(self.names, self.weights))})"


class _Function:
    """One checked reward function: how to call it and how to read what it returns."""

    def __init__(self, option: str, fn: Callable, name: str, weight: float, args: dict[str, Any],
                 columns: dict[str, bool], all_columns: bool) -> None:
        self.option, self.fn, self.name, self.weight, self.args = option, fn, name, weight, args
        self.columns = columns  # the columns the function names -> required (no default)
        self.all_columns = all_columns  # the function takes **kwargs: pass every column

    @classmethod
    def build(cls, option: str, spec: RewardSpec | Mapping[str, Any]) -> _Function:
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - set(RewardSpec.__dataclass_fields__))
            if unknown:
                fail(option, "a reward function with keys function, weight, name, args", unknown[0])
            if "function" not in spec:
                fail(f"{option}.function", "a dotted import path 'module.attribute'", None)
            spec = RewardSpec(**spec)
        elif not isinstance(spec, RewardSpec):
            fail(option, "a reward function (function, weight, name, args)", spec)
        fn = resolve_import(f"{option}.function", spec.function)
        weight = check_number(f"{option}.weight", spec.weight)
        name = spec.name if spec.name is not None else getattr(fn, "__name__", type(fn).__name__)
        if not isinstance(name, str) or not name or re.search(r"[\s/.]", name):  # a name is part of metric keys
            fail(f"{option}.name", "a non-empty name without '/', '.' or whitespace", name)
        args = spec.args if spec.args is not None else {}
        if not isinstance(args, Mapping) or not all(isinstance(key, str) for key in args):
            fail(f"{option}.args", "a mapping of argument names to values or null", args)
        args = dict(args)
        columns, all_columns = _parameters(option, spec.function, fn, args)
        for builtin, check_args in ARG_CHECKS:
            if fn is builtin:
                check_args(f"{option}.args", args)
        return cls(option, fn, name, weight, args, columns, all_columns)

    def __call__(self, prompts: list[str], completions: list[str], columns: dict[str, Sequence]) -> list[float]:
        missing = [c for c, required in self.columns.items() if required and c not in columns]
        if missing:
            have = ", ".join(map(str, columns)) or "none"
            self.error(f"needs column {missing[0]!r}, which the dataset lacks (its columns: {have})")
        if self.all_columns:
            passed = {k: v for k, v in columns.items() if k not in self.args and k not in ("prompts", "completions")}
        else:
            passed = {c: columns[c] for c in self.columns if c in columns}
        try:
            result = self.fn(prompts, completions, **passed, **self.args)
        except Exception as err:
            text = " ".join(str(err).split())
            self.error(f"raised {type(err).__name__}" + (f": {text}" if text else ""), err)
        return self.read(result, len(completions))

    def read(self, result: Any, n: int) -> list[float]:
        """The values of ``result`` as floats (NaN for None), or a RewardFunctionError."""
        if isinstance(result, (torch.Tensor, np.ndarray)):
            if result.ndim != 1:
                self.error(f"returned an array of shape {tuple(result.shape)} for {n} completions")
            result = result.tolist()
        if not isinstance(result, (list, tuple)):
            self.error(f"returned {_short(result)} (a {type(result).__name__}); expected a list of {n} numbers or None")
        if len(result) != n:
            self.error(f"returned {len(result)} values for {n} completions")
        values = []
        for i, value in enumerate(result):
            if value is None:
                values.append(math.nan)
                continue
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if not isinstance(value, (numbers.Real, np.bool_)):
                self.error(f"returned {_short(value)} (a {type(value).__name__}) for completion {i}")
            try:
                value = float(value)
            except OverflowError:  # an int beyond float's range
                value = math.inf if value > 0 else -math.inf
            if not math.isfinite(value):
                self.error(f"returned {value} for completion {i}; rewards must be finite numbers or None")
            values.append(value)
        return values

    def error(self, what: str, cause: BaseException | None = None) -> None:
        message = " ".join(f"reward function {self.name} ({self.option}) {what}".splitlines())
        raise RewardFunctionError(message) from cause


def _short(value: Any) -> str:
    """A short one-line repr."""
    return " ".join(reprlib.repr(value).splitlines())


def _parameters(option: str, path: str, fn: Callable, args: dict[str, Any]) -> tuple[dict[str, bool], bool]:
    """The columns ``fn`` names (name -> required) and whether it takes all; checks ``args`` against it."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # no signature to read: pass everything
        return {}, True
    try:
        signature.bind_partial([], [])
    except TypeError:
        fail(option + ".function", "a callable taking prompts and completions as its first two arguments",
             f"{path}{signature}")
    parameters = list(signature.parameters.values())
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)][:2]
    named = [p for p in parameters if p not in positional and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = [key for key in args if key not in {p.name for p in named}]
    if unknown:
        accepted = ", ".join(p.name for p in named) or "none"
        fail(f"{option}.args", f"arguments that {path} names (its parameters beside prompts and completions: "
             f"{accepted})", unknown[0])
    columns = {p.name: p.default is p.empty for p in named if p.name not in args}
    return columns, any(p.kind == p.VAR_KEYWORD for p in parameters)
