"""OpenEnv environments (``openenv-core``) run in this process as an :class:`~sapo_lightning.envs.Environment`.

An OpenEnv environment takes pydantic ``Action`` objects and answers ``Observation`` objects that
carry ``reward`` and ``done``; :class:`OpenEnvEnvironment` turns the policy's text into an action
and each observation back into text. Needs the ``[envs]`` extra (``pip install "sapo-lightning[envs]"``).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from typing import Any

from sapo_lightning.checks import ConfigError, fail, resolve_import
from sapo_lightning.envs.environment import Step

OBSERVATION_BASE = ("done", "reward", "metadata")  # fields every OpenEnv Observation has


def _openenv() -> tuple[type, type, type]:
    """OpenEnv's Environment, Action and Observation base classes, or the extra that installs them."""
    try:
        from openenv.core.env_server.interfaces import Environment
        from openenv.core.env_server.types import Action, Observation
    except ImportError:
        raise ConfigError("OpenEnvEnvironment needs openenv-core: pip install 'sapo-lightning[envs]'") from None
    return Environment, Action, Observation


def _one_line(err: BaseException) -> str:
    """An invalid action's reason in one line (pydantic's messages, without its links)."""
    errors = getattr(err, "errors", None)
    if callable(errors):
        return "; ".join(f"{'.'.join(map(str, e.get('loc', ()))) or 'value'}: {e.get('msg')}" for e in errors())
    return " ".join(str(err).split()) or type(err).__name__


class OpenEnvEnvironment:
    """One episode of an OpenEnv environment, built fresh for each episode.

    ``reset(row)`` resets the OpenEnv environment with the row's ``reset_args`` columns and returns
    ``instructions`` and the first observation's text; ``step(completion)`` turns the turn's text
    into an action, steps, and returns the observation's text, ``reward`` (None counts 0) and ``done``.
    A turn whose text is not a valid action (``action`` raises ValueError, or pydantic refuses the
    value) is not an error: the reason goes back as the observation, with reward 0, and the episode goes on.

    Args:
        environment: Import path of the OpenEnv ``Environment`` subclass, e.g. ``my_pkg.server.GuessEnvironment``.
        environment_args: Keyword arguments of its constructor.
        action: How a turn's text becomes an action: the import path of a function ``str -> Action``, or of an
            Action class, whose only field (beside ``metadata``) gets the text; null: the Action class that
            the environment's ``step`` annotates, or that its ``Environment[Action, Observation, State]`` base names.
        observation: How an observation becomes text: the name of one of its fields (holding text), or the
            import path of a function ``Observation -> str`` (a dotted name); null: its only field beside
            done, reward and metadata.
        reset_args: Columns of the row passed to ``reset`` as keyword arguments: a list of column names, or a
            mapping column -> parameter (``{seed: seed, answer: target}``); null: none. Name a seed column so
            that the episodes of one group start from the same state.
        instructions: Text put before the first observation in the first user message; null: none.
    """

    def __init__(
        self,
        environment: str,
        environment_args: dict[str, Any] | None = None,
        action: str | None = None,
        observation: str | None = None,
        reset_args: list[str] | dict[str, str] | None = None,
        instructions: str | None = None,
    ) -> None:
        base, self._action_base, self._observation_base = _openenv()
        cls = resolve_import("environment", environment)
        if not isinstance(cls, type) or not issubclass(cls, base):
            fail("environment", "an OpenEnv Environment subclass (openenv.core.env_server.interfaces.Environment)",
                 environment)
        if environment_args is not None and not isinstance(environment_args, Mapping):
            fail("environment_args", "a mapping of keyword arguments or null", environment_args)
        self._reset_args = self._check_reset_args(reset_args)
        if instructions is not None and not isinstance(instructions, str):
            fail("instructions", "text or null", instructions)
        self.instructions = instructions
        self._to_action = self._action_mapping(cls, action)
        self._observation = observation
        self._to_text = self._observation_mapping(observation)
        try:
            self.env = cls(**dict(environment_args or {}))
        except TypeError as err:  # a missing or unknown argument, or an abstract method left out
            raise ConfigError(f"environment_args: {environment} cannot be built: "
                              f"{' '.join(str(err).split())}") from None

    @property
    def state(self) -> Any:
        """The OpenEnv environment's state (its ``state`` property): episode id, step count..."""
        return self.env.state

    def reset(self, row: Mapping[str, Any]) -> str:
        """Reset the OpenEnv environment from the row; the first user message."""
        kwargs = {}
        for column, parameter in self._reset_args.items():
            if column not in row:
                fail("reset_args", f"columns of the row (its columns: {', '.join(map(str, row)) or 'none'})", column)
            kwargs[parameter] = row[column]
        text = self._text(self.env.reset(**kwargs))
        return text if self.instructions is None else f"{self.instructions}\n\n{text}"

    def step(self, completion: str) -> Step:
        """Act with the turn's text; the observation's text, reward and done."""
        try:
            action = self._to_action(completion)
        except ValueError as err:  # pydantic's ValidationError is a ValueError
            return Step(observation=f"Invalid action: {_one_line(err)}")
        if not isinstance(action, self._action_base):
            raise ConfigError(f"action: {_name(self._to_action)} must return an OpenEnv Action; "
                              f"it returned a {type(action).__name__}")
        observation = self.env.step(action)
        text = self._text(observation)
        reward = 0.0 if observation.reward is None else float(observation.reward)
        return Step(observation=text, reward=reward, done=bool(observation.done))

    def close(self) -> None:
        """Release what the OpenEnv environment holds (its ``close``)."""
        self.env.close()

    def _text(self, observation: Any) -> str:
        """The observation as text, checked."""
        if not isinstance(observation, self._observation_base):
            raise ConfigError(f"environment: {type(self.env).__name__}'s reset and step must return OpenEnv "
                              f"Observations; one returned a {type(observation).__name__}")
        text = self._to_text(observation)
        if not isinstance(text, str):
            where = self._observation or "the observation's only field"
            raise ConfigError(f"observation: {where} must give text; it gave a {type(text).__name__} "
                              f"({text!r:.40}) for a {type(observation).__name__}")
        return text

    def _check_reset_args(self, reset_args: Any) -> dict[str, str]:
        """``reset_args`` as a mapping column -> parameter."""
        if reset_args is None:
            return {}
        if isinstance(reset_args, Mapping):
            pairs = dict(reset_args)
        elif isinstance(reset_args, (list, tuple)):
            pairs = {column: column for column in reset_args}
        else:
            pairs = None
        if pairs is None or not all(isinstance(k, str) and isinstance(v, str) for k, v in pairs.items()):
            fail("reset_args", "a list of column names, a mapping column -> reset parameter, or null", reset_args)
        return pairs

    def _action_mapping(self, env_cls: type, action: str | None) -> Callable[[str], Any]:
        """The function from a turn's text to an action."""
        if action is None:
            cls = self._action_class(env_cls)
            if cls is None:
                fail("action", f"set: {env_cls.__name__}'s step names no Action class (annotate its action "
                     "parameter, or give an Action class or a function str -> Action)", None)
        else:
            cls = resolve_import("action", action)
            if not isinstance(cls, type):
                return cls  # a function str -> Action
            if not issubclass(cls, self._action_base):
                fail("action", "an OpenEnv Action class or a function str -> Action", action)
        fields = [name for name in cls.model_fields if name != "metadata"]
        if len(fields) != 1:
            fail("action", f"a function str -> Action: {cls.__name__} has {len(fields)} fields beside metadata "
                 f"({', '.join(fields) or 'none'}), so the text has no single field to go to", action)
        field = fields[0]
        return lambda text: cls(**{field: text})

    def _action_class(self, env_cls: type) -> type | None:
        """The Action class of ``step``'s annotation, or of the ``Environment[Action, ...]`` base."""
        try:
            hint = typing.get_type_hints(env_cls.step).get("action")
        except (NameError, TypeError):  # an annotation that does not evaluate: look at the generic base
            hint = None
        candidates = [hint] + [typing.get_args(base)[0] for base in getattr(env_cls, "__orig_bases__", ())
                               if typing.get_args(base)]
        for candidate in candidates:
            if isinstance(candidate, type) and issubclass(candidate, self._action_base) \
                    and candidate is not self._action_base:
                return candidate
        return None

    def _observation_mapping(self, observation: str | None) -> Callable[[Any], Any]:
        """The function from an observation to its text."""
        if observation is None:
            return self._default_field
        if not isinstance(observation, str) or not observation:
            fail("observation", "a field name, an import path of a function Observation -> str, or null", observation)
        if "." in observation:
            return resolve_import("observation", observation)

        def field(obs: Any) -> Any:
            if observation not in type(obs).model_fields:
                fail("observation", f"a field of {type(obs).__name__} "
                     f"(its fields: {', '.join(type(obs).model_fields)})", observation)
            return getattr(obs, observation)
        return field

    @staticmethod
    def _default_field(obs: Any) -> Any:
        """The observation's only field beside done, reward and metadata."""
        fields = [name for name in type(obs).model_fields if name not in OBSERVATION_BASE]
        if len(fields) != 1:
            fail("observation", f"set: {type(obs).__name__} has {len(fields)} fields beside done, reward and metadata "
                 f"({', '.join(fields) or 'none'}); name the one holding the text, or a function Observation -> str",
                 None)
        return getattr(obs, fields[0])


def _name(fn: Any) -> str:
    """A function's dotted name, for messages."""
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
