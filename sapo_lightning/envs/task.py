"""A task of episodes: rows from a dataset, one environment per episode, several turns each."""

from __future__ import annotations

import reprlib
from typing import Any

import torch
from torch import Tensor

from sapo_lightning.checks import ConfigError, RunFailed, check_int, check_number, fail, resolve_import
from sapo_lightning.envs.environment import Step
from sapo_lightning.loop.episodes import Limits, run_episodes
from sapo_lightning.rollout import Prompts, Rollout
from sapo_lightning.tasks import Rewards
from sapo_lightning.text.dataset import PromptDataset
from sapo_lightning.text.prompts import pad_left
from sapo_lightning.text.reward_binding import RewardFunctions, RewardSpec
from sapo_lightning.text.task import DatasetTask


class EnvironmentFailed(RunFailed):
    """An environment raised, or answered with something other than a :class:`~sapo_lightning.envs.Step`."""


class EnvTask(DatasetTask):
    """Episodes of several turns between the policy and an environment, one environment object per episode.

    Every episode of a group of G starts from the same dataset row: a fresh environment is built from
    ``env`` (``class_path`` and ``init_args``), ``reset(row)`` gives the first user message, and the
    policy and the environment take turns (see :mod:`sapo_lightning.loop.episodes`). The episode's
    reward is the sum of its step rewards plus the weighted ``rewards`` functions, which get the
    policy's last turn as the completion and the row's columns, and also ``transcript`` (the messages)
    and ``environment`` (the object) by name. Evaluation logs ``val/reward`` (greedy decoding),
    ``val/exact_match`` (episodes whose reward reached ``success_threshold``), ``val/solved_turn_1``
    (solved in one turn) and ``val/turns``.

    Args:
        env: The environment: ``{class_path: my_pkg.MyEnv, init_args: {...}}``; a class with ``reset(row)``
            and ``step(completion)`` (:class:`~sapo_lightning.envs.Environment`).
        train_file: Rows given to ``reset`` in training: a JSONL, JSON, CSV or Parquet file or a saved dataset.
        tokenizer: The policy's tokenizer (its chat template writes the messages), as a policy's ``path``.
        val_file: Rows for validation; null: a seeded ``val_fraction`` of the training file.
        test_file: Rows for ``sapo-lightning test``; null: the validation rows.
        val_fraction: Share of the training file held out for validation when there is no ``val_file``.
        split_seed: Seed of that split.
        chat: Write messages through the chat template (else the first message and every reply as plain text).
        system_prompt: A system message before the first user message (chat only); null: the template's default.
        max_turns: Most policy turns per episode.
        max_new_tokens: Most tokens per turn.
        max_episode_tokens: Most tokens per episode, the first prompt included; an episode that reaches it ends
            truncated. At most the model's context.
        rewards: Reward functions over the episode, added to the step rewards (as ``PromptTask``'s); null: none.
        success_threshold: The episode reward at or above which an episode counts as solved.
        reuse_cache: Keep the model's KV cache across turns instead of running the transcript again each turn.
        stop_token_ids: Token ids that end a turn besides the tokenizer's EOS.
    """

    def __init__(
        self,
        env: dict[str, Any],
        train_file: str,
        tokenizer: str,
        val_file: str | None = None,
        test_file: str | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        chat: bool = True,
        system_prompt: str | None = None,
        max_turns: int = 4,
        max_new_tokens: int = 64,
        max_episode_tokens: int = 1024,
        rewards: list[RewardSpec] | None = None,
        success_threshold: float = 1.0,
        reuse_cache: bool = True,
        stop_token_ids: list[int] | None = None,
    ) -> None:
        self.env_class, self.env_args = environment_class(env)
        self.max_turns = check_int("max_turns", max_turns, 1)
        self.response_len = check_int("max_new_tokens", max_new_tokens, 1)
        self.max_episode_tokens = check_int("max_episode_tokens", max_episode_tokens, 2)
        self.success_threshold = check_number("success_threshold", success_threshold)
        self.reward_functions = None if rewards is None else RewardFunctions(rewards)
        self.chat, self.system_prompt, self.reuse_cache = chat, system_prompt, reuse_cache
        self.data = PromptDataset(train_file=train_file, tokenizer=tokenizer, max_prompt_length=max_episode_tokens,
                                  val_file=val_file, test_file=test_file, val_fraction=val_fraction,
                                  split_seed=split_seed, prompt_column=None)
        self.tokenizer = self.data.tokenizer
        if chat and self.tokenizer.chat_template is None:
            fail("tokenizer", "a tokenizer with a chat template (chat is true)", tokenizer)
        self.vocab_size = len(self.tokenizer)
        self.eos_token = self.tokenizer.eos_token_id
        for i, token in enumerate(stop_token_ids or []):
            check_int(f"stop_token_ids[{i}]", token, 0, self.vocab_size - 1)
        self.stop_token_ids = [self.eos_token, *(t for t in stop_token_ids or [] if t != self.eos_token)]
        self.longest_prompt = self.max_episode_tokens - self.response_len  # with a turn: the context to hold
        self._closing, self._after_turn = self._end_of_turn() if chat else (self.eos_token, "")

    # -- episodes ---------------------------------------------------------------------------------
    def sample(self, policy: Any, queries: Prompts, generator: torch.Generator | None = None,
               greedy: bool = False) -> tuple[Prompts, Rollout]:
        """Run one episode per row of ``queries``: the first prompts the environments wrote, and the rollout."""
        if not hasattr(policy, "turns"):
            fail("model.policy", "a policy that decodes turns (sapo_lightning.lm.policy.CausalLMPolicy) for an EnvTask",
                 type(policy).__name__)
        rows = [{name: values[i] for name, values in queries.columns.items()} for i in range(len(queries))]
        environments = [self._build(row) for row in rows]
        firsts = [self._call(env, "reset", row, 0, row) for env, row in zip(environments, rows)]
        messages = [self._opening(first) for first in firsts]
        texts = [self._render(m, add_generation_prompt=True, tools=getattr(env, "tools", None))  # a ToolEnv's tools
                 for m, env in zip(messages, environments)]
        ids, attention = pad_left([self._encode(t, first=True) for t in texts], self.tokenizer.pad_token_id)
        device = queries.input_ids.device
        prompts = Prompts(ids.to(device), attention.to(device), texts, queries.columns)
        talk = _Talk(self, environments, rows)
        decoder = policy.turns(prompts.input_ids, prompts.attention_mask, self.reuse_cache)
        limits = Limits(self.max_turns, self.response_len, self.max_episode_tokens)
        rollout = run_episodes(decoder, talk, messages, environments, limits, policy.pad_token, generator, greedy)
        return prompts, rollout

    def _build(self, row: dict[str, Any]) -> Any:
        try:
            return self.env_class(**self.env_args)
        except Exception as err:
            raise EnvironmentFailed(f"{_name(self.env_class)}(**{self.env_args!r}) raised "
                                    f"{type(err).__name__}: {err} (row {_row(row)})") from None

    def _call(self, env: Any, method: str, row: dict[str, Any], turn: int, *args: Any) -> Any:
        """``env.method(*args)``, its failure one line naming the environment, the row and the turn."""
        try:
            out = getattr(env, method)(*args)
        except Exception as err:
            message = " ".join(str(err).split())
            raise EnvironmentFailed(f"{_name(self.env_class)}.{method} raised {type(err).__name__}: {message} "
                                    f"(row {_row(row)}, turn {turn})") from None
        wanted = str if method == "reset" else Step
        if not isinstance(out, wanted):
            raise EnvironmentFailed(f"{_name(self.env_class)}.{method} must return a {wanted.__qualname__}; got "
                                    f"{type(out).__name__} {reprlib.repr(out)} (row {_row(row)}, turn {turn})")
        return out

    def _opening(self, first: str) -> list[dict[str, str]]:
        system = [] if self.system_prompt is None else [{"role": "system", "content": self.system_prompt}]
        return system + [{"role": "user", "content": first}]

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool, tools: list | None = None) -> str:
        if not self.chat:
            return "\n".join(m["content"] for m in messages)
        return self.tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                                  tokenize=False)

    def _encode(self, text: str, first: bool = False) -> list[int]:
        """Token ids of environment or template text: special tokens as the template wrote them."""
        return self.tokenizer(text, add_special_tokens=first and not self.chat)["input_ids"]

    def _end_of_turn(self) -> tuple[int, str]:
        """The stop token that closes an assistant message in the chat template, and the template's text after
        it (e.g. ``<|im_end|>`` and a newline): a cut turn gets that token, and every reply starts with that text."""
        marker = "ASSISTANT-TURN"
        text = self._render([{"role": "user", "content": "q"}, {"role": "assistant", "content": marker}],
                            add_generation_prompt=False)
        after = text[text.rindex(marker) + len(marker):]
        for token in self.stop_token_ids:
            closing = self.tokenizer.decode([token])
            if closing and after.startswith(closing):
                return token, after[len(closing):]
        raise ConfigError(f"stop_token_ids must hold the token that closes an assistant message in the chat template, "
                          f"which writes {after!r} after one; got {self.stop_token_ids} (the tokenizer's EOS and "
                          "stop_token_ids)")

    def reply_tokens(self, observation: str, role: str, stopped: bool) -> list[int]:
        """The tokens after a turn: its end-of-turn if it was cut, the template's text after it, the message
        ``observation`` in ``role``, and the opening of the next assistant turn."""
        closing = [] if stopped else [self._closing]
        if not self.chat:
            return closing + self._encode(observation)
        base = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
        before = self._render(base, add_generation_prompt=False)
        try:
            after = self._render(base + [{"role": role, "content": observation}], add_generation_prompt=True)
        except Exception:  # a template without this role (e.g. no tool role): the message as the user's
            after = self._render(base + [{"role": "user", "content": observation}], add_generation_prompt=True)
        if not after.startswith(before):
            raise ConfigError("tokenizer: its chat template must render a conversation as a prefix of the same "
                              "conversation with one more message, so that a reply can be appended")
        return closing + self._encode(self._after_turn + after[len(before):])

    # -- rewards ----------------------------------------------------------------------------------
    def rewards(self, queries: Prompts, rollout: Rollout) -> Rewards:
        episodes = rollout.episodes
        total, terms = episodes.step_reward.clone(), {"environment": episodes.step_reward}
        if self.reward_functions is not None:
            last_turns = [next((m["content"] for m in reversed(t) if m["role"] == "assistant"), "")
                          for t in episodes.transcripts]
            columns = queries.columns | {"transcript": episodes.transcripts, "environment": episodes.environments}
            extra = self.reward_functions(queries.texts, last_turns, columns)
            total = total + extra.total.to(total.device)
            terms |= {name: term.to(total.device) for name, term in extra.terms.items()}
        return Rewards(total, terms)

    def evaluate(self, queries: Prompts, rollout: Rollout) -> dict[str, Tensor]:
        rewards = self.rewards(queries, rollout)
        solved = rewards.total >= self.success_threshold
        turns = rollout.episodes.turns
        return {"reward": rewards.total, "exact_match": solved.float(),
                "solved_turn_1": (solved & (turns == 1)).float(), "turns": turns.float()}

    def sample_texts(self, queries: Prompts, rollout: Rollout) -> list[tuple[str, str]]:
        """Each episode as (its first user message, the rest with roles shown), for TextSamples."""
        out = []
        for transcript in rollout.episodes.transcripts:
            first = next(i for i, m in enumerate(transcript) if m["role"] == "user")
            rest = "\n".join(f"[{m['role']}] {m['content']}" for m in transcript[first + 1:])
            out.append((transcript[first]["content"], rest))
        return out


class _Talk:
    """The episode loop's side of an :class:`EnvTask`'s environments."""

    def __init__(self, task: EnvTask, environments: list[Any], rows: list[dict[str, Any]]) -> None:
        self.task, self.environments, self.rows = task, environments, rows

    def step(self, row: int, turn: int, tokens: list[int]) -> tuple[str, Step]:
        if tokens and tokens[-1] in self.task.stop_token_ids:  # the turn's text, without its end-of-turn token
            tokens = tokens[:-1]
        text = self.task.tokenizer.decode(tokens, skip_special_tokens=True)
        return text, self.task._call(self.environments[row], "step", self.rows[row], turn, text)

    def reply(self, row: int, step: Step, stopped: bool) -> list[int]:
        return self.task.reply_tokens(step.observation or "", step.role, stopped)


def environment_class(env: Any) -> tuple[type, dict[str, Any]]:
    """The class and init args of ``env`` (``{class_path, init_args}``), refused in one line unless the class
    imports and has ``reset`` and ``step``."""
    if isinstance(env, str):
        env = {"class_path": env}
    if not isinstance(env, dict) or "class_path" not in env or set(env) - {"class_path", "init_args"}:
        fail("env", "a mapping {class_path: module.Class, init_args: {...}}", env)
    cls = resolve_import("env.class_path", env["class_path"])
    missing = [name for name in ("reset", "step") if not callable(getattr(cls, name, None))]
    if not isinstance(cls, type) or missing:
        fail("env.class_path", "an environment class with reset(row) and step(completion) methods "
             f"(sapo_lightning.envs.Environment){'; it lacks ' + ', '.join(missing) if missing else ''}",
             env["class_path"])
    args = env.get("init_args") or {}
    if not isinstance(args, dict):
        fail("env.init_args", "a mapping of the class's arguments", args)
    return cls, args


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _row(row: dict[str, Any]) -> str:
    return reprlib.repr(row)
