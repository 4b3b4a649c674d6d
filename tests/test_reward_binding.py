"""Reward functions by import path: calling, binding columns and args, weighted totals, errors.

The helper reward functions below are imported by path as ``test_reward_binding.<name>``: pytest
puts this directory on ``sys.path`` and imports this file as the module ``test_reward_binding``.
"""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest
import torch
import yaml
from jsonargparse import ArgumentParser

from sapo_lightning.checks import ConfigError
from sapo_lightning.text import reward_binding
from sapo_lightning.text.reward_binding import RewardFunctionError, RewardFunctions, RewardSpec

BUILTIN = "sapo_lightning.text.rewards."
CALLS: list[tuple[str, dict]] = []  # (function, keyword arguments) of the helpers below


def names_answer(prompts, completions, answer):
    CALLS.append(("names_answer", {"answer": answer}))
    return [1.0] * len(completions)


def takes_all(prompts, completions, **columns):
    CALLS.append(("takes_all", columns))
    return [0.0] * len(completions)


def with_default(prompts, completions, level=7, scale=1.0):
    CALLS.append(("with_default", {"level": level, "scale": scale}))
    return [scale] * len(completions)


def fixed(prompts, completions, values):
    """Returns ``values`` (bound through args) whatever the completions."""
    return values


def as_tuple(prompts, completions):
    return tuple(range(len(completions)))


def as_tensor(prompts, completions):
    return torch.arange(len(completions), dtype=torch.float64) / 2


def as_numpy(prompts, completions):
    return np.array([True, False])[: len(completions)]


def raises(prompts, completions):
    raise ValueError("bad\nthing")


def raises_bare(prompts, completions):
    raise KeyError


def one_positional(prompts):
    return []


def returns_scalar(prompts, completions):
    return 0.5


def returns_matrix(prompts, completions):
    return torch.zeros(len(completions), 1)


NOT_CALLABLE = 3


def rewards(*specs: dict) -> RewardFunctions:
    return RewardFunctions([RewardSpec(**spec) for spec in specs])


def test_docstring_yaml_example_builds_and_scores():
    doc = reward_binding.__doc__
    block = textwrap.dedent(doc[doc.index("    rewards:"):doc.index("\n\n", doc.index("    rewards:"))])
    functions = RewardFunctions([RewardSpec(**item) for item in yaml.safe_load(block)["rewards"]])
    assert functions.names == ["numeric_answer", "regex_format"]
    out = functions(["q"] * 3, ["so #### 42", "42", "so #### 41"], {"answer": ["#### 42"] * 3})
    assert out.total.tolist() == pytest.approx([1.1, 1.0, 0.1])


# --- weights, None and the total -------------------------------------------------------------------


def test_total_weights_terms_and_none():
    functions = rewards(
        {"function": "test_reward_binding.fixed", "weight": 2.0, "name": "a", "args": {"values": [1, None, 0.5, None]}},
        {"function": "test_reward_binding.fixed", "weight": -0.5, "name": "b", "args": {"values": [None, 4, 1, None]}},
    )
    out = functions(["p"] * 4, ["c"] * 4, {})
    # completion 0: 2*1; 1: -0.5*4; 2: 2*0.5 - 0.5*1; 3: no function applies -> 0
    assert out.total.tolist() == [2.0, -2.0, 0.5, 0.0]
    assert out.total.dtype == torch.float32
    assert list(out.terms) == ["a", "b"] == functions.names
    assert out.terms["a"].dtype == torch.float32
    assert torch.equal(out.terms["a"].isnan(), torch.tensor([False, True, False, True]))
    assert out.terms["b"][1:3].tolist() == [4.0, 1.0]


def test_accepted_result_types():
    functions = rewards(
        {"function": "test_reward_binding.as_tuple"}, {"function": "test_reward_binding.as_tensor"},
        {"function": "test_reward_binding.as_numpy"},
        {"function": "test_reward_binding.fixed", "args": {"values": [True, np.float32(0.25)]}},
    )
    out = functions(["p", "p"], ["c", "d"])
    assert {name: term.tolist() for name, term in out.terms.items()} == {
        "as_tuple": [0.0, 1.0], "as_tensor": [0.0, 0.5], "as_numpy": [1.0, 0.0], "fixed": [1.0, 0.25],
    }
    assert out.total.tolist() == [2.0, 1.75]


def test_no_completions():
    out = rewards({"function": BUILTIN + "numeric_answer"})([], [], {"answer": []})
    assert out.total.shape == (0,) and out.terms["numeric_answer"].shape == (0,)


# --- columns by name -------------------------------------------------------------------------------


def test_columns_passed_by_name():
    CALLS.clear()
    functions = rewards(
        {"function": "test_reward_binding.names_answer"}, {"function": "test_reward_binding.takes_all"},
        {"function": "test_reward_binding.with_default", "args": {"scale": 2.0}},
    )
    columns = {"answer": ["4", "5"], "level": [1, 2], "source": ["a", "b"]}
    out = functions(["p", "q"], ["c", "d"], columns)
    assert CALLS == [
        ("names_answer", {"answer": ["4", "5"]}),  # only the column it names
        ("takes_all", columns),  # **kwargs: every column
        ("with_default", {"level": [1, 2], "scale": 2.0}),  # the column, and the bound arg
    ]
    assert out.terms["names_answer"].tolist() == [1.0, 1.0]


def test_bound_arg_replaces_column_and_default_fills_missing_column():
    CALLS.clear()
    functions = rewards({"function": "test_reward_binding.with_default", "args": {"level": 3}},
                        {"function": "test_reward_binding.takes_all", "args": {}})
    functions(["p"], ["c"], {"source": ["a"]})
    assert CALLS == [("with_default", {"level": 3, "scale": 1.0}), ("takes_all", {"source": ["a"]})]


def test_missing_column_names_function_and_column():
    functions = rewards({"function": "test_reward_binding.with_default"}, {"function": BUILTIN + "numeric_answer"})
    with pytest.raises(RewardFunctionError) as caught:
        functions(["p"], ["c"], {"question": ["q"]})
    assert str(caught.value) == (
        "reward function numeric_answer (rewards[1]) needs column 'answer', which the dataset lacks "
        "(its columns: question)"
    )


def test_columns_of_another_length_are_a_caller_error():
    with pytest.raises(ValueError, match="column 'answer' must hold one value per completion; got 1 for 2"):
        rewards({"function": BUILTIN + "numeric_answer"})(["p", "p"], ["c", "d"], {"answer": ["1"]})


# --- bad specs: ConfigError naming the option ------------------------------------------------------


@pytest.mark.parametrize("specs, message", [
    ([], "rewards must be a list of at least one reward function; got []"),
    ([{"function": "numeric_answer"}], "rewards[0].function must be a dotted import path 'module.attribute'; got "),
    ([{"function": "no_such_package.fn"}], "rewards[0].function must be an importable path 'module.attribute'; got "
     "'no_such_package.fn': no module named 'no_such_package'"),
    ([{"function": BUILTIN + "nope"}], f"rewards[0].function must be an importable path 'module.attribute'; got "
     f"'{BUILTIN}nope': sapo_lightning.text.rewards has no attribute 'nope'"),
    ([{"function": "sapo_lightning.text.rewardz.numeric_answer"}],
     "no module named 'sapo_lightning.text.rewardz'"),
    ([{"function": "test_reward_binding.NOT_CALLABLE"}],
     "rewards[0].function must name a callable; got 'test_reward_binding.NOT_CALLABLE', a int"),
    ([{"function": "test_reward_binding.one_positional"}],
     "rewards[0].function must be a callable taking prompts and completions as its first two arguments"),
    ([{"function": BUILTIN + "exact_match", "weight": math.nan}], "rewards[0].weight must be a finite number; got nan"),
    ([{"function": BUILTIN + "exact_match", "weight": "1"}], "rewards[0].weight must be a finite number; got '1'"),
    ([{"function": BUILTIN + "exact_match"}, {"function": BUILTIN + "exact_match", "weight": 2}],
     "rewards[1].name must differ from rewards[0]'s; got 'exact_match'"),
    ([{"function": BUILTIN + "exact_match", "name": "a/b"}], "rewards[0].name must be a non-empty name"),
    ([{"function": BUILTIN + "exact_match", "name": "acc.v2"}],
     "rewards[0].name must be a non-empty name without '/', '.'"),
    ([{"function": BUILTIN + "exact_match", "args": {"ignorecase": True}}],
     "rewards[0].args must be arguments that sapo_lightning.text.rewards.exact_match names (its parameters beside "
     "prompts and completions: answer, ignore_case); got 'ignorecase'"),
    ([{"function": BUILTIN + "exact_match", "args": {"prompts": []}}], "rewards[0].args must be arguments that"),
    ([{"function": BUILTIN + "exact_match", "args": [1]}], "rewards[0].args must be a mapping"),
    ([{"function": BUILTIN + "numeric_answer", "wieght": 1}], "rewards[0] must be a reward function with keys"),
])
def test_bad_spec_is_one_line_config_error(specs, message):
    with pytest.raises(ConfigError) as caught:
        RewardFunctions(specs)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_module_that_fails_to_import(tmp_path, monkeypatch):
    (tmp_path / "broken_rewards.py").write_text("raise RuntimeError('boom\\nbang')\n")
    (tmp_path / "needs_dep_rewards.py").write_text("import not_installed_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError) as caught:
        rewards({"function": "broken_rewards.fn"})
    assert str(caught.value) == ("rewards[0].function must be importable; got 'broken_rewards.fn', whose module "
                                 "broken_rewards fails to import: RuntimeError: boom bang")
    with pytest.raises(ConfigError, match="needs_dep_rewards fails to import: ModuleNotFoundError: No module named "
                                          "'not_installed_dependency'"):
        rewards({"function": "needs_dep_rewards.fn"})


def test_reward_spec_fields_documented_for_the_cli():
    parser = ArgumentParser()
    parser.add_class_arguments(RewardSpec, "spec")
    help_text = " ".join(parser.format_help().split())
    for documented in ("Dotted import path", "Weight of this function's reward", "train/rewards/<name>",
                       "Keyword arguments bound to the function"):
        assert documented in help_text


# --- bad results: RewardFunctionError, one line naming the function ---------------------------------


@pytest.mark.parametrize("spec, message", [
    ({"function": "test_reward_binding.raises"}, "reward function raises (rewards[0]) raised ValueError: bad thing"),
    ({"function": "test_reward_binding.fixed", "args": {"values": [1.0]}},
     "reward function fixed (rewards[0]) returned 1 values for 2 completions"),
    ({"function": "test_reward_binding.fixed", "name": "mine", "args": {"values": [1.0, "x"]}},
     "reward function mine (rewards[0]) returned 'x' (a str) for completion 1"),
    ({"function": "test_reward_binding.fixed", "args": {"values": [math.nan, 1.0]}},
     "reward function fixed (rewards[0]) returned nan for completion 0; rewards must be finite numbers or None"),
    ({"function": "test_reward_binding.fixed", "args": {"values": [1.0, -math.inf]}},
     "reward function fixed (rewards[0]) returned -inf for completion 1"),
    ({"function": "test_reward_binding.fixed", "args": {"values": [1.0, "multi\nline " * 40]}},
     "reward function fixed (rewards[0]) returned 'multi\\nline"),
    ({"function": "test_reward_binding.fixed", "args": {"values": [1.0, 10**400]}},
     "reward function fixed (rewards[0]) returned inf for completion 1"),
    ({"function": "test_reward_binding.fixed", "args": {"values": [1.0, "two  spaces"]}},
     "reward function fixed (rewards[0]) returned 'two  spaces' (a str) for completion 1"),  # the value as it was
    ({"function": "test_reward_binding.raises_bare"}, "reward function raises_bare (rewards[0]) raised KeyError"),
    ({"function": "test_reward_binding.returns_scalar"},
     "reward function returns_scalar (rewards[0]) returned 0.5 (a float); expected a list of 2 numbers or None"),
    ({"function": "test_reward_binding.fixed", "args": {"values": "ab"}},
     "reward function fixed (rewards[0]) returned 'ab' (a str); expected a list of 2 numbers or None"),
    ({"function": "test_reward_binding.returns_matrix"},
     "reward function returns_matrix (rewards[0]) returned an array of shape (2, 1) for 2 completions"),
])
def test_bad_result_is_one_line_reward_function_error(spec, message):
    functions = rewards(spec)
    with pytest.raises(RewardFunctionError) as caught:
        functions(["p", "q"], ["c", "d"], {"answer": ["1", "2"]})
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_error_names_the_failing_function_among_several():
    functions = rewards({"function": BUILTIN + "exact_match"},
                        {"function": "test_reward_binding.raises", "name": "second"})
    with pytest.raises(RewardFunctionError, match=r"^reward function second \(rewards\[1\]\) raised ValueError"):
        functions(["p"], ["c"], {"answer": ["c"]})
