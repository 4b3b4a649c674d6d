"""A small OpenEnv environment for tests: guess a hidden number, told higher or lower; reward 1 and done on a hit.

Named in configs as ``guess_env.GuessEnvironment`` (tests/ is on sys.path under pytest).
"""

from __future__ import annotations

import random
import re
from typing import Any
from uuid import uuid4

from openenv.core.env_server.interfaces import Environment
from openenv.core.env_server.types import Action, Observation, State
from pydantic import Field


class GuessAction(Action):
    """A guess."""

    guess: int


class GuessObservation(Observation):
    """What the player is told."""

    message: str = ""


class GuessState(State):
    """The hidden number and the guesses so far (episode_id and step_count come from State)."""

    target: int = 0
    guesses: list[int] = Field(default_factory=list)


class GuessEnvironment(Environment[GuessAction, GuessObservation, GuessState]):
    """Guess a number in [low, high]: reset(seed) draws it (or reset(target=...) sets it)."""

    def __init__(self, low: int = 1, high: int = 100) -> None:
        super().__init__()
        self.low, self.high = low, high
        self._state = GuessState()

    def reset(self, seed: int | None = None, episode_id: str | None = None, target: int | None = None,
              **kwargs: Any) -> GuessObservation:
        drawn = random.Random(seed).randint(self.low, self.high) if target is None else target
        self._state = GuessState(episode_id=episode_id or str(uuid4()), target=drawn)
        return GuessObservation(message=f"Guess a number from {self.low} to {self.high}.")

    def step(self, action: GuessAction, timeout_s: float | None = None, **kwargs: Any) -> GuessObservation:
        self._state.step_count += 1
        self._state.guesses = [*self._state.guesses, action.guess]
        if action.guess == self._state.target:
            return GuessObservation(message="Correct!", reward=1.0, done=True)
        hint = "higher" if action.guess < self._state.target else "lower"
        return GuessObservation(message=f"{action.guess} is wrong: go {hint}.", reward=0.0)

    @property
    def state(self) -> GuessState:
        return self._state


def parse_guess(text: str) -> GuessAction:
    """The last integer in the text as a guess; ValueError when there is none."""
    numbers = re.findall(r"-?\d+", text)
    if not numbers:
        raise ValueError("no number in the answer")
    return GuessAction(guess=int(numbers[-1]))


def not_an_action(text: str) -> str:
    """A broken action mapping: returns text."""
    return text


def hint_length(observation: GuessObservation) -> int:
    """A broken observation mapping: returns a number."""
    return len(observation.message)


def shout(observation: GuessObservation) -> str:
    """An observation mapping: the message in capitals."""
    return observation.message.upper()


class EchoAction(Action):
    """One text field: the default action mapping puts the turn's text there."""

    message: str


class EchoObservation(Observation):
    """One text field: the default observation mapping reads it."""

    echoed: str = ""


class EchoEnvironment(Environment):
    """Echoes each message back; done after ``turns`` steps; reward = its length / 10. No generic base:
    the Action class comes from step's annotation."""

    def __init__(self, turns: int = 2) -> None:
        super().__init__()
        self.turns = turns
        self._state = State()

    def reset(self, seed: int | None = None, episode_id: str | None = None, **kwargs: Any) -> EchoObservation:
        self._state = State(episode_id=episode_id)
        return EchoObservation(echoed="ready")

    def step(self, action: EchoAction, timeout_s: float | None = None, **kwargs: Any) -> EchoObservation:
        self._state.step_count += 1
        done = self._state.step_count >= self.turns
        return EchoObservation(echoed=action.message, reward=len(action.message) / 10, done=done)

    @property
    def state(self) -> State:
        return self._state


class NotAnEnvironment:
    """Has reset and step but is no OpenEnv Environment."""

    def reset(self, **kwargs: Any) -> None: ...

    def step(self, action: Any) -> None: ...
