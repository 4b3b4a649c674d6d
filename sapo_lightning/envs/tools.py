"""Tool use as an environment: the public methods of a plain Python class are the tools the policy may call.

The class follows the convention of TRL's ``environment_factory``: one instance per episode (so it
may keep state), an optional ``reset(**columns)`` that gets the dataset row, and every public
method with a docstring (Google style, ``Args:`` for each argument, type hints) a tool, described
to the model by the JSON schema ``transformers.utils.get_json_schema`` builds. Needs the ``[hf]``
extra for transformers.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from sapo_lightning.checks import ConfigError, fail, resolve_import
from sapo_lightning.envs.environment import Step
from sapo_lightning.envs.tool_calls import parse_tool_calls
from sapo_lightning.text.reward_binding import RewardFunctions, RewardSpec

HIDDEN = ("reset", "reward")  # public methods of the class that are not tools


def _schema_builder() -> tuple[Callable[[Callable], dict], tuple[type[Exception], ...]]:
    """transformers' tool-schema builder and the errors it raises, or the extra that installs it."""
    try:
        from transformers.utils import (
            DocstringParsingException,
            TypeHintParsingException,
            get_json_schema,
        )
    except ImportError:
        raise ConfigError("ToolEnv needs transformers: pip install 'sapo-lightning[hf]'") from None
    return get_json_schema, (DocstringParsingException, TypeHintParsingException)


@functools.lru_cache(maxsize=4)
def _tokenizer_template(path: str) -> dict[str, Any]:
    """The response template a tokenizer ships; loaded once per process."""
    from sapo_lightning.text.dataset import load_tokenizer

    template = getattr(load_tokenizer(path), "response_template", None)
    if template is None:
        fail("tokenizer", "a tokenizer with a response_template (transformers >= 5.13 reads it from "
             "tokenizer_config.json), or null for the Hermes format", path)
    return template


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


class ToolEnv:
    """One episode of tool calls on an instance of ``environment``, built fresh for each episode.

    ``reset(row)``: the first user message is the row's ``prompt`` column, followed by what the
    class's ``reset`` returns, if it has one (it gets the row's columns it names as keyword
    arguments, all of them if it takes ``**kwargs``; it returns text or None).

    ``step(completion)``: each tool call in the turn (in the chat template's format, see
    :mod:`sapo_lightning.envs.tool_calls`) is run, and the results, one per line, are the
    observation, to be given back as a tool message; reward 0. A turn without a tool call ends the
    episode: it is the final answer, and its reward is the episode's. Unknown tools, bad arguments,
    a tool that raises and a call that is not valid JSON are no errors: their message (``Error: ...``)
    is the tool's result, and the episode goes on.

    Attributes:
        tools: The tools' JSON schemas, for ``tokenizer.apply_chat_template(messages, tools=env.tools)``.
        env: The instance of ``environment`` of this episode.

    Args:
        environment: Import path of the class whose public methods are the tools, e.g. ``my_pkg.tools.Calculator``.
        environment_args: Keyword arguments of its constructor.
        rewards: Reward functions of the final answer, as a run's ``rewards`` list (``function``, ``weight``,
            ``name``, ``args``), called with the first user message as the prompt, the final turn as the
            completion and the row's other columns; null: the class's own ``reward``, a method
            ``reward(completion) -> float`` or a number attribute its tools set, read when the episode ends.
        prompt: The row's column holding the question (text); null: the first message is what the
            class's ``reset`` returns.
        response_template: The tool-call format as a transformers response template (a mapping); null: the
            ``tokenizer``'s if set, else the Hermes format (Qwen 2.5 / 3):
            ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
        tokenizer: A tokenizer (directory, hub id, ``.gguf``) whose ``response_template`` gives the format;
            null: ``response_template``.
    """

    def __init__(
        self,
        environment: str,
        environment_args: dict[str, Any] | None = None,
        rewards: list[RewardSpec | dict[str, Any]] | None = None,
        prompt: str | None = "prompt",
        response_template: dict[str, Any] | None = None,
        tokenizer: str | None = None,
    ) -> None:
        get_json_schema, schema_errors = _schema_builder()
        cls = resolve_import("environment", environment)
        if not isinstance(cls, type):
            fail("environment", "a class whose public methods are the tools", environment)
        if environment_args is not None and not isinstance(environment_args, Mapping):
            fail("environment_args", "a mapping of keyword arguments or null", environment_args)
        if prompt is not None and not isinstance(prompt, str):
            fail("prompt", "a column name or null", prompt)
        self.prompt = prompt
        self._template = self._check_template(response_template, tokenizer)
        try:
            self.env = cls(**dict(environment_args or {}))
        except TypeError as err:
            raise ConfigError(f"environment_args: {environment} cannot be built: {_one_line(err)}") from None
        self._tools: dict[str, Callable] = {}
        self.tools: list[dict[str, Any]] = []
        for name in _public_functions(cls):
            method = getattr(self.env, name)
            try:
                self.tools.append(get_json_schema(method))
            except schema_errors as err:
                raise ConfigError(f"environment: tool {cls.__name__}.{name} needs type hints and a docstring with "
                                  f"Args: for each argument ({_one_line(err)}); a leading _ hides a method "
                                  "that is no tool") from None
            self._tools[name] = method
        if not self._tools:
            fail("environment", "a class with at least one public method (a tool)", environment)
        self._rewards = None if rewards is None else RewardFunctions(rewards)
        if self._rewards is None and not hasattr(self.env, "reward"):
            fail("rewards", f"set: {cls.__name__} has no reward (a method reward(completion) or a number "
                 "attribute) to score the final answer", None)
        self._row: dict[str, Any] = {}
        self._question = ""

    def reset(self, row: Mapping[str, Any]) -> str:
        """Start the episode on a dataset row; the first user message."""
        self._row = dict(row)
        parts = []
        if self.prompt is not None:
            if not isinstance(row.get(self.prompt), str):
                fail("prompt", f"a column of the row holding text (its columns: {', '.join(map(str, row)) or 'none'})",
                     self.prompt)
            parts.append(row[self.prompt])
        reset = getattr(self.env, "reset", None)
        if callable(reset):
            extra = reset(**_named_columns(reset, self._row))
            if extra is not None and not isinstance(extra, str):
                raise ConfigError(f"environment: {type(self.env).__name__}.reset must return text or None; "
                                  f"it returned a {type(extra).__name__}")
            parts.append(extra or "")
        self._question = "\n\n".join(part for part in parts if part)
        if not self._question:
            fail("prompt", "a column with the question, or a reset that returns one: the first message is empty",
                 self.prompt)
        return self._question

    def step(self, completion: str) -> Step:
        """Run the turn's tool calls (their results are the observation), or score the final answer."""
        try:
            calls = parse_tool_calls(completion, self._template, self.tools)
        except ValueError as err:
            return Step(observation=f"Error: the tool call is not valid: {_one_line(err)}", role="tool")
        if not calls:
            return Step(reward=self._score(completion), done=True)
        return Step(observation="\n".join(self._call(call) for call in calls), role="tool")

    def _call(self, call: Any) -> str:
        """One tool call's result, or what is wrong with it, as text."""
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return f'Error: a tool call is {{"name": ..., "arguments": {{...}}}}; got {json.dumps(call, default=str)}'
        name, arguments = call["name"], call.get("arguments") or {}
        if isinstance(arguments, str):  # some formats write the arguments as a JSON string
            try:
                arguments = json.loads(arguments)
            except ValueError:
                pass
        tool = self._tools.get(name)
        if tool is None:
            return f"Error: no tool {name!r}; the tools are {', '.join(self._tools)}"
        if not isinstance(arguments, dict):
            return f"Error: the arguments of {name} must be an object; got {json.dumps(arguments, default=str)}"
        try:
            inspect.signature(tool).bind(**arguments)
        except TypeError as err:
            return f"Error: bad arguments for {name}: {err}"
        try:
            result = tool(**arguments)
        except Exception as err:  # noqa: BLE001 -- a tool's failure is its result: the model reads it and goes on
            return f"Error: {name} raised {type(err).__name__}: {_one_line(err)}"
        return result if isinstance(result, str) else json.dumps(result, default=str, ensure_ascii=False)

    def _score(self, completion: str) -> float:
        """The final answer's reward."""
        if self._rewards is not None:
            columns = {key: [value] for key, value in self._row.items() if key != self.prompt}
            return float(self._rewards([self._question], [completion], columns).total[0])
        reward = self.env.reward
        value = reward(completion) if callable(reward) else reward
        if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
            raise ConfigError(f"environment: {type(self.env).__name__}.reward must be a finite number; "
                              f"got {value!r}")
        return float(value)

    @staticmethod
    def _check_template(template: Any, tokenizer: str | None) -> dict[str, Any] | None:
        """The response template to parse turns with, checked; None: Hermes."""
        if template is not None and tokenizer is not None:
            fail("response_template", "null when tokenizer is set (the tokenizer's template is used)", template)
        if tokenizer is not None:
            template = _tokenizer_template(tokenizer)
        elif template is not None and not isinstance(template, Mapping):
            fail("response_template", "a transformers response template (a mapping) or null", template)
        if template is not None:
            try:
                parse_tool_calls("", dict(template))
            except ValueError as err:
                raise ConfigError(f"response_template: {_one_line(err)}") from None
            template = dict(template)
        return template


def _public_functions(cls: type) -> list[str]:
    """The names of the class's public methods that are tools, in the order they are defined."""
    names: dict[str, None] = {}
    for klass in reversed(cls.__mro__[:-1]):  # base classes first, object left out
        for name, value in vars(klass).items():
            if isinstance(value, staticmethod):
                value = value.__func__
            if inspect.isfunction(value) and not name.startswith("_") and name not in HIDDEN:
                names[name] = None
    return list(names)


def _named_columns(fn: Callable, row: dict[str, Any]) -> dict[str, Any]:
    """The row's columns ``fn`` names as parameters, or all of them if it takes ``**kwargs``."""
    parameters = inspect.signature(fn).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return row
    names = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return {key: value for key, value in row.items() if key in names}

