"""Reward functions: plain Python callables, named by import path in the YAML, summed with weights.

A run lists its reward functions under ``rewards``; each item is a :class:`RewardSpec`::

    rewards:
      - function: sapo_lightning.text.rewards.numeric_answer
        weight: 1.0
      - function: sapo_lightning.text.rewards.regex_format
        weight: 0.1
        args: {pattern: '.*#### -?[0-9]+'}

``function`` is a dotted import path ``module.attribute`` (``my_pkg.rewards.length_penalty``;
``module.Class.attribute`` also works). The module is imported and the callable checked when
:class:`RewardFunctions` is built, before anything runs.

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

**Built-ins.** :func:`numeric_answer` (the final number equals the reference's, compared exactly
as numbers), :func:`exact_match` (the completion equals the reference string), :func:`char_match`
(partial credit: the share of characters right) and :func:`regex_format` (the completion matches a
regular expression). Each reads its reference
from the ``answer`` column (``regex_format`` reads none) and takes ``**_`` for the rest; their
args are checked when :class:`RewardFunctions` is built (an invalid pattern is a config error).
:func:`final_number` is the answer extraction on its own.
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
import re
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import torch

from sapo_lightning.checks import ConfigError, check_number, fail
from sapo_lightning.tasks import Rewards

__all__ = [
    "RewardFunctionError", "RewardFunctions", "RewardSpec", "char_match", "exact_match", "final_number",
    "numeric_answer",
    "regex_format",
]

Reward = float | None


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


class RewardFunctionError(RuntimeError):
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
        fn = _resolve(f"{option}.function", spec.function)
        weight = check_number(f"{option}.weight", spec.weight)
        name = spec.name if spec.name is not None else getattr(fn, "__name__", type(fn).__name__)
        if not isinstance(name, str) or not name or re.search(r"[\s/.]", name):  # a name is part of metric keys
            fail(f"{option}.name", "a non-empty name without '/', '.' or whitespace", name)
        args = spec.args if spec.args is not None else {}
        if not isinstance(args, Mapping) or not all(isinstance(key, str) for key in args):
            fail(f"{option}.args", "a mapping of argument names to values or null", args)
        args = dict(args)
        columns, all_columns = _parameters(option, spec.function, fn, args)
        for builtin, check_args in _ARG_CHECKS:
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


def _resolve(option: str, path: Any) -> Callable:
    """The callable at the dotted import path ``path``, or a ConfigError saying what failed."""
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


# --- built-in reward functions ------------------------------------------------------------------

# A number: optional sign, digits with optional thousands separators, optional decimals, or a simple
# fraction a/b. Not inside a word ("x2") nor after a decimal point ("1.5.3" ends at 1.5).
_NUMBER = re.compile(r"(?<![\w.])([-+\u2212]?)((?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?)(?![0-9])(?:/([0-9]+))?")
_FRAC = re.compile(r"\\[dt]?frac\{\s*([-+]?[0-9.,]+)\s*\}\{\s*([0-9.,]+)\s*\}")


def _numbers(text: str) -> list[Fraction]:
    found = []
    for sign, digits, denominator in _NUMBER.findall(text):
        value = Fraction(digits.replace(",", ""))
        if denominator:
            if int(denominator) == 0:
                continue
            value /= int(denominator)
        found.append(-value if sign in ("-", "\u2212") else value)
    return found


def _last_boxed(text: str) -> str | None:
    """The contents of the last ``\\boxed{...}`` (balanced braces; to the end if unclosed)."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    start += len("\\boxed{")
    depth = 1
    for end in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[end], 0)
        if depth == 0:
            return text[start:end]
    return text[start:]


def final_number(text: Any) -> Fraction | None:
    """The final numeric answer of ``text`` as an exact number, or None where it holds none.

    The first of: the first number after the last ``####`` (GSM8K); the last number inside the
    last ``\\boxed{...}`` (``\\frac{a}{b}`` read as a/b); the last number in the text. Numbers
    may carry a sign, thousands separators (``1,234``), decimals (``42.0`` is 42) and be a simple
    fraction (``3/4``). An int or float (not a bool) is taken as is.
    """
    if text is None:
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        return Fraction(text)
    if isinstance(text, float):
        return Fraction(repr(text)) if math.isfinite(text) else None
    text = str(text)
    if "####" in text:
        found = _numbers(text[text.rfind("####") + 4:])
        if found:
            return found[0]
    boxed = _last_boxed(text)
    if boxed is not None:
        found = _numbers(_FRAC.sub(r"\1/\2", boxed.replace("{,}", ",")))
        if found:
            return found[-1]
    found = _numbers(text)
    return found[-1] if found else None


def numeric_answer(prompts: list[str], completions: list[str], answer: Sequence, **_: Any) -> list[Reward]:
    """1.0 where the completion's final number (:func:`final_number`) equals the reference's, else 0.0.

    The reference ``answer`` (e.g. a GSM8K solution ending ``#### 42``, or a bare number) is read
    the same way; where it holds no number the reward does not apply (None). A completion with no
    number scores 0.0. Numbers compare exactly (``42.0``, ``42`` and ``84/2`` are equal).
    """
    rewards: list[Reward] = []
    for completion, reference in zip(completions, answer, strict=True):
        target = final_number(reference)
        rewards.append(None if target is None else float(final_number(completion) == target))
    return rewards


def exact_match(
    prompts: list[str], completions: list[str], answer: Sequence, ignore_case: bool = False, **_: Any
) -> list[Reward]:
    """1.0 where the completion equals the reference ``answer`` after stripping surrounding whitespace.

    ``ignore_case`` (an arg) compares case-folded strings. A None reference does not apply (None).
    """
    rewards: list[Reward] = []
    for completion, reference in zip(completions, answer, strict=True):
        if reference is None:
            rewards.append(None)
            continue
        a, b = completion.strip(), str(reference).strip()
        rewards.append(float(a.casefold() == b.casefold() if ignore_case else a == b))
    return rewards


def char_match(
    prompts: list[str], completions: list[str], answer: Sequence, end_weight: float = 0.25, **_: Any
) -> list[Reward]:
    """Partial credit for a short string answer: the share of positions right, stopping at the right length counting a little.

    With c the completion and a the reference (both stripped) and w = ``end_weight`` (an arg),
    the reward is ``(sum(c[i] == a[i]) + w·[len(c) == len(a)]) / (max(len(c), len(a)) + w)``:
    every right character counts, so does stopping at the right length, and characters past the
    reference's length (a completion that does not stop) lower it; 1.0 only when exact. A small
    w makes the right characters worth more than the right length, so a policy learns what to
    write before it learns where to stop. A None reference does not apply (None).
    """
    rewards: list[Reward] = []
    for completion, reference in zip(completions, answer, strict=True):
        if reference is None:
            rewards.append(None)
            continue
        c, a = completion.strip(), str(reference).strip()
        right = sum(x == y for x, y in zip(c, a)) + end_weight * (len(c) == len(a))
        rewards.append(right / (max(len(c), len(a)) + end_weight) if (c or a) else 1.0)
    return rewards


def regex_format(
    prompts: list[str], completions: list[str], pattern: str, full: bool = True, **_: Any
) -> list[Reward]:
    """1.0 where the completion matches the regular expression ``pattern`` (an arg), else 0.0.

    ``full`` (default): the whole completion, stripped of surrounding whitespace, must match
    (``re.fullmatch``); ``full: false``: a match anywhere will do (``re.search``). ``.`` matches
    newlines too (``re.DOTALL``); inline flags such as ``(?i)`` work.
    """
    compiled = re.compile(pattern, re.DOTALL)
    if full:
        return [float(compiled.fullmatch(completion.strip()) is not None) for completion in completions]
    return [float(compiled.search(completion) is not None) for completion in completions]


def _check_regex_args(option: str, args: dict[str, Any]) -> None:
    pattern = args.get("pattern")
    if not isinstance(pattern, str):
        fail(f"{option}.pattern", "a regular expression (a string)", pattern)
    try:
        re.compile(pattern, re.DOTALL)
    except re.error as err:
        raise ConfigError(f"{option}.pattern must be a valid regular expression; got {pattern!r} ({err})") from None
    if not isinstance(args.get("full", True), bool):
        fail(f"{option}.full", "true or false", args["full"])


def _check_exact_args(option: str, args: dict[str, Any]) -> None:
    if not isinstance(args.get("ignore_case", False), bool):
        fail(f"{option}.ignore_case", "true or false", args["ignore_case"])


def _check_char_args(option: str, args: dict[str, Any]) -> None:
    if "end_weight" in args:
        check_number(f"{option}.end_weight", args["end_weight"], 0)


#: Checks of a built-in's args, run when RewardFunctions is built: (function, check(option prefix, args)).
_ARG_CHECKS: list[tuple[Callable, Callable[[str, dict[str, Any]], None]]] = [
    (regex_format, _check_regex_args),
    (exact_match, _check_exact_args),
    (char_match, _check_char_args),
]
