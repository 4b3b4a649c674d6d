"""The built-in reward functions: extraction of final answers, each built-in worked by hand, their arg checks."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from sapo_lightning.checks import ConfigError
from sapo_lightning.text.reward_binding import RewardFunctions
from sapo_lightning.text.rewards import (
    char_match,
    exact_match,
    final_number,
    number_anywhere,
    numeric_answer,
    regex_format,
)

BUILTIN = "sapo_lightning.text.rewards."


# --- final answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, number", [
    ("She sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72", 72),  # GSM8K: after ####, not the last number
    ("#### 72\nthen 5 more", 72),  # the first number after the last ####
    ("#### 1\n#### 2", 2),
    ("#### none\nso 9", 9),  # no number after ####: the next rule
    ("so 3 + 4 = \\boxed{7} (check: 8)", 7),
    ("\\boxed{1} then \\boxed{x = 12}", 12),  # the last boxed, its last number
    ("\\boxed{\\frac{3}{4}}", Fraction(3, 4)),
    ("\\boxed{-\\dfrac{1}{2}}", Fraction(-1, 2)),
    ("\\boxed{1{,}000}", 1000),
    ("\\boxed{{2}}", 2),  # nested braces
    ("first 3 then 5 apples.", 5),  # the last number; the period ends the sentence
    ("42.0", 42),
    ("1,000 people", 1000),
    ("$1,234,567.50", Fraction(2469135, 2)),
    ("it fell to -5", -5),
    ("it fell to \u22125", -5),  # unicode minus
    ("10-3", 3),  # a minus between numbers is not a sign
    ("pi is 3.14", Fraction(314, 100)),
    ("3/4 of it", Fraction(3, 4)),
    ("version 1.5.3", Fraction(3, 2)),  # no number starts after a decimal point
    ("x2 is the name", None),  # a digit inside a word is no number
    ("no number here", None),
    ("", None),
    (None, None),
    (42, 42),
    (2.5, Fraction(5, 2)),
    (math.nan, None),
])
def test_final_number(text, number):
    assert final_number(text) == number


def test_numeric_answer_compares_numbers():
    completions = ["The answer is 42.0", "#### 1,000", "it is 41", "I don't know", "\\boxed{-3}", "7"]
    answer = ["Step 1...\n#### 42", "1000", "#### 42", "#### 42", "#### -3", "no number"]
    assert numeric_answer([""] * 6, completions, answer) == [1.0, 1.0, 0.0, 0.0, 1.0, None]


def test_exact_match():
    completions = ["  Paris\n", "paris", "Paris, France", "x"]
    answer = ["Paris", "Paris", "Paris", None]
    assert exact_match([""] * 4, completions, answer) == [1.0, 0.0, 0.0, None]
    assert exact_match([""] * 4, completions, answer, ignore_case=True) == [1.0, 1.0, 0.0, None]


def test_char_match_gives_partial_credit_and_full_marks_only_when_exact():
    completions = ["cba", "cbx", "cbaaaa", "c", " cba\n", "", "x"]
    answer = ["cba", "cba", "cba", "cba", "cba", "", None]
    # (characters right + w [same length]) / (longer length + w), w = 1 here and 0.25 by default
    assert char_match([""] * 7, completions, answer, end_weight=1.0) == [1.0, 3 / 4, 3 / 7, 1 / 4, 1.0, 1.0, None]
    assert char_match([""] * 7, completions, answer)[:4] == [1.0, 2.25 / 3.25, 3 / 6.25, 1 / 3.25]
    # the right character without stopping beats a wrong one that stops
    assert char_match([""] * 2, ["cY", "X"], ["c", "c"]) == [1 / 2.25, 0.25 / 1.25]


def test_regex_format_full_and_search():
    completions = ["  think\nstep\n#### 42 \n", "#### 42 and more", "no answer"]
    pattern = ".*#### -?[0-9]+"
    assert regex_format([""] * 3, completions, pattern) == [1.0, 0.0, 0.0]  # whole, stripped; . spans lines
    assert regex_format([""] * 3, completions, pattern, full=False) == [1.0, 1.0, 0.0]
    assert regex_format([""], ["ANSWER"], "(?i)answer") == [1.0]


def test_number_anywhere_finds_the_reference_among_all_numbers():
    completions = ["11 + 59 = 70", "11 + 59 = 70", "1700", "it is 70.0, or 69", "3/4", "no number", "x", "-70"]
    answer = ["70", "#### 7", "70", "#### 70", "3", "70", "no number", "70"]
    # 70 is the last of 11, 59, 70; 7 is none of them; 1700 is one number; 70.0 = 70 though not the last;
    # 3/4 is one number, 0.75; nothing to find; no reference number: does not apply; -70 is not 70
    assert number_anywhere([""] * 8, completions, answer) == [1.0, 0.0, 0.0, 1.0, 0.0, 0.0, None, 0.0]
    assert number_anywhere([""], ["11 + 59 = 70"], ["11"]) == [1.0]  # any number counts, not only the final one
    assert numeric_answer([""], ["it is 70.0, or 69"], ["70"]) == [0.0]  # where the strict reward differs


# --- their args: checked when the reward functions are built ---------------------------------------


@pytest.mark.parametrize("spec, message", [
    ({"function": BUILTIN + "exact_match", "args": {"ignore_case": "yes"}},
     "rewards[0].args.ignore_case must be true or false; got 'yes'"),
    ({"function": BUILTIN + "regex_format"},
     "rewards[0].args.pattern must be a regular expression (a string); got None"),
    ({"function": BUILTIN + "regex_format", "args": {"pattern": "(unclosed"}},
     "rewards[0].args.pattern must be a valid regular expression; got '(unclosed' (missing ), unterminated subpattern"),
    ({"function": BUILTIN + "regex_format", "args": {"pattern": "a", "full": 1}},
     "rewards[0].args.full must be true or false; got 1"),
    ({"function": BUILTIN + "char_match", "args": {"end_weight": -1}}, "rewards[0].args.end_weight must be"),
])
def test_bad_builtin_args_are_one_line_config_errors(spec, message):
    with pytest.raises(ConfigError) as caught:
        RewardFunctions([spec])
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)
