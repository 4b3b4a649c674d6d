"""A task of text prompts from a dataset file, rewarded by Python functions on the decoded completions."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from sapo_lightning.checks import check_int, check_number
from sapo_lightning.rollout import Prompts, Rollout
from sapo_lightning.tasks import Rewards, Task
from sapo_lightning.text.dataset import PromptDataset
from sapo_lightning.text.reward_binding import RewardFunctions, RewardSpec


class DatasetTask(Task):
    """A task whose rows come from a :class:`~sapo_lightning.text.dataset.PromptDataset`, ``self.data``."""

    data: PromptDataset

    def train_batch(self, index: int, batch_size: int, seed: int, rank: int, world_size: int) -> Prompts:
        return self.data.train_batch(index, batch_size, seed, rank, world_size)

    def eval_rows(self, stage: str, size: int, seed: int) -> Sequence[Any]:
        return self.data.eval_rows(stage, size, seed)

    def collate(self, rows: Sequence[Any]) -> Prompts:
        return self.data.collate(rows)


class PromptTask(DatasetTask):
    """Prompts from a local dataset, completions by a causal LM, rewards from Python functions.

    Every training batch takes ``data.batch_size`` prompts from a seeded, per-epoch shuffle of
    the training file (each rank its own disjoint share); each completion is decoded and scored
    by the ``rewards`` functions, whose weighted sum is the reward. Evaluation logs the mean
    reward (``val/reward``), each function's share of completions at or above
    ``accuracy_threshold`` (``val/accuracy/<name>``) and the share where every function that
    applies is (``val/exact_match``).

    Args:
        train_file: Prompts for training: a local JSONL, JSON, CSV or Parquet file, or a
            directory saved by ``datasets``.
        tokenizer: The tokenizer (its EOS ends a completion): a ``save_pretrained`` directory, a hub id,
            a ``.gguf`` file or ``pkg:PACKAGE/FILE.gguf``, as a policy's ``path``.
        rewards: Reward functions with weights: ``[{function: import.path, weight: 1.0}]``; the
            dataset's other columns reach them by name.
        max_prompt_length: Longest prompt in tokens; longer ones are dropped (counted at start).
        max_new_tokens: Longest completion in tokens.
        prompt_column: Column holding the prompt: plain text or a list of chat messages.
        val_file: Prompts for validation; null: a seeded ``val_fraction`` of the training file.
        test_file: Prompts for ``sapo-lightning test``; null: the validation prompts.
        val_fraction: Share of the training file held out for validation when there is no
            ``val_file``.
        split_seed: Seed of that split (fixed, so a resumed run splits the same way).
        chat: Wrap plain-text prompts as one user message of the tokenizer's chat template.
        too_long: ``drop`` prompts longer than ``max_prompt_length`` or stop with an ``error``.
        stop_token_ids: Token ids that end a completion besides the tokenizer's EOS.
        accuracy_threshold: A reward function's value at or above which a completion counts
            as solved for ``val/accuracy/<name>``.
    """

    def __init__(
        self,
        train_file: str,
        tokenizer: str,
        rewards: list[RewardSpec],
        max_prompt_length: int = 256,
        max_new_tokens: int = 64,
        prompt_column: str = "prompt",
        val_file: str | None = None,
        test_file: str | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        chat: bool = False,
        too_long: str = "drop",
        stop_token_ids: list[int] | None = None,
        accuracy_threshold: float = 1.0,
    ) -> None:
        self.response_len = check_int("max_new_tokens", max_new_tokens, 1)
        self.accuracy_threshold = check_number("accuracy_threshold", accuracy_threshold)
        self.reward_functions = RewardFunctions(rewards)  # checked before the files are read
        self.data = PromptDataset(
            train_file=train_file, tokenizer=tokenizer, max_prompt_length=max_prompt_length, val_file=val_file,
            test_file=test_file, val_fraction=val_fraction, split_seed=split_seed, prompt_column=prompt_column,
            chat=chat, too_long=too_long,
        )
        self.tokenizer = self.data.tokenizer
        self.vocab_size = len(self.tokenizer)
        self.eos_token = self.tokenizer.eos_token_id
        for i, token in enumerate(stop_token_ids or []):
            check_int(f"stop_token_ids[{i}]", token, 0, self.vocab_size - 1)
        self.stop_token_ids = [self.eos_token, *(t for t in stop_token_ids or [] if t != self.eos_token)]
        #: tokens of the longest prompt of any split: with max_new_tokens, the positions a policy must hold
        self.longest_prompt = max(len(row["input_ids"]) for rows in (self.data.train_rows, self.data.val_rows,
                                                                     self.data.test_rows) for row in rows)

    # -- rewards ---------------------------------------------------------------------------
    def decode(self, responses: Tensor, mask: Tensor) -> list[str]:
        """Completion texts: the masked tokens (a prefix of each row), without special tokens (the EOS)."""
        lengths = mask.sum(-1).tolist()  # [N]; one transfer, then one batched decode
        return self.tokenizer.batch_decode([row[:n] for row, n in zip(responses.tolist(), lengths)],
                                           skip_special_tokens=True)

    def rewards(self, queries: Prompts, rollout: Rollout) -> Rewards:
        completions = self.decode(rollout.responses, rollout.mask)
        rewards = self.reward_functions(queries.texts, completions, queries.columns)  # on the CPU
        device = rollout.responses.device
        return Rewards(rewards.total.to(device), {name: term.to(device) for name, term in rewards.terms.items()})

    def sample_texts(self, queries: Prompts, rollout: Rollout) -> list[tuple[str, str]]:
        """Each response as (prompt, completion) text, for :class:`~sapo_lightning.text.samples.TextSamples`."""
        return list(zip(queries.texts, self.decode(rollout.responses, rollout.mask)))

    def evaluate(self, queries: Prompts, rollout: Rollout) -> dict[str, Tensor]:
        rewards = self.rewards(queries, rollout)
        solved = {name: term >= self.accuracy_threshold for name, term in rewards.terms.items()}  # NaN -> False
        applies = {name: ~term.isnan() for name, term in rewards.terms.items()}
        every = torch.ones_like(rewards.total, dtype=torch.bool)
        for name in solved:
            every &= solved[name] | ~applies[name]
        any_applies = torch.stack(list(applies.values())).any(0)
        values = {"reward": rewards.total, "exact_match": (every & any_applies).float()}
        for name in solved:  # NaN where the function does not apply: left out of the mean
            values[f"accuracy/{name}"] = torch.where(applies[name], solved[name].float(), float("nan"))
        return values
