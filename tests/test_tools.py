"""ToolEnv and tool-call parsing, driven by hand with written turns (tool classes in tests/tool_envs.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from sapo_lightning.checks import ConfigError
from sapo_lightning.envs import Environment, Step, tool_calls
from sapo_lightning.envs.tool_calls import HERMES, hermes_tool_calls, parse_tool_calls
from sapo_lightning.envs.tools import ToolEnv

ASCII = str(Path(__file__).resolve().parents[1] / "assets" / "tokenizers" / "ascii")
ROW = {"prompt": "What is 2 + 3?", "answer": 5}
needs_parser = pytest.mark.skipif(tool_calls.parse_response is None, reason="transformers < 5.13: no response parser")


def call(name: str, arguments: str) -> str:
    return f'<tool_call>\n{{"name": "{name}", "arguments": {arguments}}}\n</tool_call>'


def calculator(**kwargs) -> ToolEnv:
    env = ToolEnv("tool_envs.Calculator", **kwargs)
    env.reset(ROW)
    return env


def test_public_methods_with_docstrings_are_the_tools_base_class_first():
    env = ToolEnv("tool_envs.Calculator")
    assert isinstance(env, Environment)
    assert [tool["function"]["name"] for tool in env.tools] == ["echo", "add", "divide", "history"]
    add = env.tools[1]["function"]
    assert add["description"] == "Add two integers (plus the calculator's offset)."
    assert add["parameters"]["properties"]["a"] == {"type": "integer", "description": "The first integer."}
    assert add["parameters"]["required"] == ["a", "b"]


def test_the_first_message_is_the_prompt_and_what_reset_returns_from_the_columns_it_names():
    env = ToolEnv("tool_envs.Calculator")
    assert env.reset(ROW) == "What is 2 + 3?\n\nUse the tools."
    assert env.env.answer == 5
    counter = ToolEnv("tool_envs.Counter")  # no reset: the prompt alone
    assert counter.reset(ROW) == "What is 2 + 3?"
    assert ToolEnv("tool_envs.Calculator", prompt=None).reset({"answer": 1}) == "Use the tools."


def test_a_tool_call_runs_the_method_and_its_result_is_the_observation():
    env = calculator(environment_args={"offset": 10})
    assert env.step("Let me add.\n" + call("add", '{"a": 2, "b": 3}')) == Step("15", 0.0, False, "tool")
    assert env.step(call("echo", '{"text": "hi"}')) == Step("hi", 0.0, False, "tool")
    assert env.step(call("history", "{}")) == Step("[[\"add\", 2, 3]]", 0.0, False, "tool")


def test_several_calls_in_a_turn_give_one_result_a_line():
    env = calculator()
    turn = call("add", '{"a": 1, "b": 1}') + "\n" + call("divide", '{"a": 9, "b": 2}')
    assert env.step(turn) == Step("2\n4.5", 0.0, False, "tool")
    assert env.env.calls == [("add", 1, 1)]


@needs_parser
def test_arguments_are_cast_to_the_schema_types():
    assert calculator().step(call("add", '{"a": "2", "b": 3}')).observation == "5"


@pytest.mark.parametrize(
    ("turn", "result"),
    [
        (call("multiply", '{"a": 2}'), "Error: no tool 'multiply'; the tools are echo, add, divide, history"),
        (call("add", '{"a": 2}'), "Error: bad arguments for add: missing a required argument: 'b'"),
        (call("add", '{"a": 2, "b": 3, "c": 4}'),
         "Error: bad arguments for add: got an unexpected keyword argument 'c'"),
        (call("divide", '{"a": 1, "b": 0}'), "Error: divide raised ZeroDivisionError: division by zero"),
        (call("add", "[2, 3]"), "Error: the arguments of add must be an object; got [2, 3]"),
        ('<tool_call>["add"]</tool_call>', 'Error: a tool call is {"name": ..., "arguments": {...}}; got ["add"]'),
    ],
)
def test_a_bad_call_is_no_crash_its_error_is_the_tool_result(turn, result):
    env = calculator()
    assert env.step(turn) == Step(result, 0.0, False, "tool")
    assert env.env.calls == []
    assert env.step("5").done  # the episode goes on


def test_a_call_that_is_not_json_is_reported_and_the_episode_goes_on():
    step = calculator().step('<tool_call>{"name": "add", "arguments": {"a": 2,</tool_call>')
    assert step.observation.startswith("Error: the tool call is not valid: ") and not step.done
    assert "\n" not in step.observation


def test_a_turn_without_a_tool_call_ends_the_episode_scored_by_the_class_reward():
    env = calculator()
    env.step(call("add", '{"a": 2, "b": 3}'))
    assert env.step("The answer is 5.") == Step(None, 1.0, True)
    assert calculator().step("It is 6.") == Step(None, 0.0, True)


def test_reward_functions_score_the_final_answer_with_the_row_columns():
    env = calculator(rewards=[{"function": "sapo_lightning.text.rewards.numeric_answer", "weight": 2.0}])
    assert env.step("2 + 3 = 5") == Step(None, 2.0, True)
    assert calculator(rewards=[{"function": "sapo_lightning.text.rewards.numeric_answer"}]).step("6").reward == 0.0


def test_a_reward_attribute_set_by_the_tools_is_read_at_the_end():
    env = ToolEnv("tool_envs.Counter")
    env.reset(ROW)
    assert env.step(call("increment", "{}")).observation == "1.0"
    assert env.step(call("increment", "{}")).observation == "2.0"
    assert env.step("done") == Step(None, 2.0, True)


def test_episodes_keep_their_own_state():
    first, second = calculator(), calculator()
    first.step(call("add", '{"a": 1, "b": 2}'))
    assert second.step(call("history", "{}")).observation == "[]"
    assert first.step(call("history", "{}")).observation == '[["add", 1, 2]]'


TURNS = [
    "The answer is 5.",
    call("add", '{"a": 2, "b": 3}'),
    "Thinking.\n" + call("add", '{"a": 2, "b": 3}') + "\n" + call("echo", '{"text": "hi"}'),
    "<think>maybe " + call("echo", '{"text": "no"}') + "</think>" + call("echo", '{"text": "yes"}'),
    '<tool_call>{"name": "history", "arguments": {}}',  # cut short before the closing tag
]
CALLS = [
    [],
    [{"name": "add", "arguments": {"a": 2, "b": 3}}],
    [{"name": "add", "arguments": {"a": 2, "b": 3}}, {"name": "echo", "arguments": {"text": "hi"}}],
    [{"name": "echo", "arguments": {"text": "yes"}}],
    [{"name": "history", "arguments": {}}],
]


@needs_parser
@pytest.mark.parametrize(("turn", "calls"), list(zip(TURNS, CALLS)))
def test_transformers_parses_hermes_tool_calls(turn, calls):
    assert parse_tool_calls(turn) == calls


@pytest.mark.parametrize(("turn", "calls"), list(zip(TURNS, CALLS)))
def test_the_fallback_parses_hermes_tool_calls_as_transformers_does(turn, calls):
    assert hermes_tool_calls(turn) == calls


def test_both_parsers_refuse_a_call_that_is_not_json():
    turn = "<tool_call>not json</tool_call>"
    with pytest.raises(ValueError):
        hermes_tool_calls(turn)
    if tool_calls.parse_response is not None:
        with pytest.raises(ValueError):
            parse_tool_calls(turn)


def other_format() -> dict:
    """Hermes with <call>...</call> in place of <tool_call>...</tool_call>."""
    template = copy.deepcopy(HERMES)
    template["fields"]["tool_calls"].update(open_pattern=r"\s*<call>", close="</call>")
    return template


@needs_parser
def test_a_response_template_gives_the_format():
    env = calculator(response_template=other_format())
    assert env.step('<call>{"name": "add", "arguments": {"a": 1, "b": 2}}</call>') == Step("3", 0.0, False, "tool")
    assert env.step(call("add", '{"a": 1, "b": 2}')).done  # Hermes calls are plain text in this format


@needs_parser
def test_a_tokenizer_gives_its_response_template(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(ASCII)
    tokenizer.response_template = other_format()
    tokenizer.save_pretrained(tmp_path / "with_template")
    env = calculator(tokenizer=str(tmp_path / "with_template"))
    assert env.step('<call>{"name": "add", "arguments": {"a": 1, "b": 2}}</call>').observation == "3"
    with pytest.raises(ConfigError, match=r"^tokenizer must be a tokenizer with a response_template .*; "
                                          r"got '.*ascii'$"):
        ToolEnv("tool_envs.Calculator", tokenizer=ASCII)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"environment": "tool_envs.Undocumented"}, ("environment: tool Undocumented.helper needs type hints and a "
                                                     "docstring with Args: for each argument (Cannot generate")),
        ({"environment": "tool_envs.Calculator.add"}, "environment must be a class whose public methods are the tools"),
        ({"environment": "tool_envs.Nope"}, "tool_envs has no attribute 'Nope'"),
        ({"environment": "tool_envs.Base"}, "rewards must be set: Base has no reward"),
        ({"environment_args": {"scale": 2}}, "environment_args: tool_envs.Calculator cannot be built: "),
        ({"rewards": [{"function": "no_such.reward"}]}, "rewards[0].function must be an importable path"),
        ({"response_template": {"fields": {}}}, "response_template: "),
        ({"response_template": HERMES, "tokenizer": ASCII}, "response_template must be null when tokenizer is set"),
    ],
)
def test_bad_configs_fail_in_one_line_when_built(kwargs, message):
    with pytest.raises(ConfigError) as err:
        ToolEnv(**{"environment": "tool_envs.Calculator", **kwargs})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_class_that_answers_the_wrong_type_fails_in_one_line():
    with pytest.raises(ConfigError, match=r"^prompt must be a column of the row holding text \(its columns: answer\)"):
        ToolEnv("tool_envs.Calculator").reset({"answer": 1})
    env = ToolEnv("tool_envs.BadReset")
    with pytest.raises(ConfigError, match=r"^environment: BadReset.reset must return text or None; it returned a int$"):
        env.reset(ROW)
    with pytest.raises(ConfigError, match=r"^environment: BadReset.reward must be a finite number; got 'high'$"):
        env.step("final")


def test_without_transformers_parser_the_hermes_fallback_runs_the_calls(monkeypatch):
    monkeypatch.setattr(tool_calls, "parse_response", None)
    env = calculator()
    assert env.step(call("add", '{"a": 2, "b": 3}')) == Step("5", 0.0, False, "tool")
    assert env.step("<tool_call>{oops</tool_call>").observation.startswith("Error: the tool call is not valid: ")
    assert env.step("5") == Step(None, 1.0, True)
    with pytest.raises(ConfigError, match=r"^response_template: a response template needs transformers >= 5.13"):
        calculator(response_template=HERMES)
