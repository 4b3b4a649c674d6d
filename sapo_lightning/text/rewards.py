"""The built-in reward functions, named in a run's ``rewards`` as ``sapo_lightning.text.rewards.<name>``.

Each is a reward function as :mod:`sapo_lightning.text.reward_binding` calls one: ``fn(prompts,
completions, **columns)`` returning one value per completion, a number or None where it does not
apply. Each reads its reference from the ``answer`` column (:func:`regex_format` reads none) and
takes ``**_`` for the other columns; their args are checked when the run's reward functions are
built (:data:`ARG_CHECKS`).

- :func:`numeric_answer`: the final number equals the reference's, compared exactly as numbers.
- :func:`number_anywhere`: the reference's number is one of the numbers in the completion.
- :func:`exact_match`: the completion equals the reference string.
- :func:`char_match`: partial credit, the share of characters right.
- :func:`regex_format`: the completion matches a regular expression.

:func:`final_number` is the answer extraction on its own.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from sapo_lightning.checks import ConfigError, check_number, fail

__all__ = [
    "ARG_CHECKS", "char_match", "exact_match", "final_number", "number_anywhere", "numeric_answer", "regex_format",
]

Reward = float | None

# A number: optional sign, digits with optional thousands separators, optional decimals, or a simple
# fraction a/b. Not inside a word ("x2") nor after a decimal point ("1.5.3" ends at 1.5).
_NUMBER = re.compile(r"(?<![\w.])([-+\u2212]?)((?:[0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(?:\.[0-9]+)?)"
                     r"(?![0-9])(?:/([0-9]+))?")
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


def number_anywhere(prompts: list[str], completions: list[str], answer: Sequence, **_: Any) -> list[Reward]:
    """1.0 where the reference's number is one of the numbers in the completion, else 0.0: lenient accuracy.

    The reference ``answer`` is read as :func:`numeric_answer` reads it (:func:`final_number`;
    None where it holds no number). The completion's numbers are all those :func:`final_number`'s
    parser finds, wherever they stand, compared exactly as numbers: ``11 + 59 = 70`` holds 11, 59
    and 70, so it scores 1.0 for 70 (and for 11) and 0.0 for 7; ``1700`` holds only 1700, so it
    scores 0.0 for 70. ``3/4`` is one number (0.75), not 3 and 4.
    """
    rewards: list[Reward] = []
    for completion, reference in zip(completions, answer, strict=True):
        target = final_number(reference)
        rewards.append(None if target is None else float(target in _numbers(completion)))
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
    """Partial credit for a short string answer: the share of positions right,
    stopping at the right length counting a little.

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


#: Checks of a built-in's args, run when the reward functions are built: (function, check(option prefix, args)).
ARG_CHECKS: list[tuple[Callable, Callable[[str, dict[str, Any]], None]]] = [
    (regex_format, _check_regex_args),
    (exact_match, _check_exact_args),
    (char_match, _check_char_args),
]
