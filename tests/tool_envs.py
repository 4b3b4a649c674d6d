"""Tool classes for ToolEnv tests (named in configs as ``tool_envs.Calculator``: tests/ is on sys.path under pytest)."""

from __future__ import annotations


class Base:
    """A base class: its tools come first."""

    def echo(self, text: str) -> str:
        """Say the text back.

        Args:
            text: What to say.
        """
        return text


class Calculator(Base):
    """Arithmetic tools; the final answer is right when it holds the row's answer."""

    def __init__(self, offset: int = 0) -> None:
        self.offset = offset
        self.calls: list[tuple] = []
        self.answer: int | None = None

    def reset(self, answer: int) -> str:
        self.answer = answer
        return "Use the tools."

    def add(self, a: int, b: int) -> int:
        """Add two integers (plus the calculator's offset).

        Args:
            a: The first integer.
            b: The second integer.
        """
        self.calls.append(("add", a, b))
        return a + b + self.offset

    @staticmethod
    def divide(a: float, b: float) -> float:
        """Divide a by b.

        Args:
            a: The dividend.
            b: The divisor.
        """
        return a / b

    def history(self) -> list:
        """The calls made so far."""
        return [list(call) for call in self.calls]

    def reward(self, completion: str) -> float:
        return float(str(self.answer) in completion)

    def _helper(self) -> None:
        """Hidden: a leading underscore."""


class Counter:
    """TRL's convention: tools set a reward attribute, read when the episode ends; no reset."""

    def __init__(self) -> None:
        self.reward = 0.0

    def increment(self) -> float:
        """Add one to the reward."""
        self.reward += 1.0
        return self.reward


class Undocumented:
    """A public method without a docstring cannot be a tool."""

    def helper(self, x: int) -> int:
        return x

    def reward(self, completion: str) -> float:
        return 0.0


class BadReset:
    """reset returns a number."""

    def reset(self, **columns) -> int:
        return 3

    def noop(self) -> str:
        """Do nothing."""
        return ""

    def reward(self, completion: str) -> str:
        return "high"
