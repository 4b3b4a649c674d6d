"""Any reasoning-gym dataset as a single-turn text task, scored by that dataset's own ``score_answer``.

Needs the ``[envs]`` extra (``pip install "sapo-lightning[envs]"``) for ``reasoning-gym``, and the
``[hf]`` extra for the tokenizer. The rows are generated in the process, so nothing is downloaded.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import json
import re
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.utilities import rank_zero_info

from sapo_lightning.checks import ConfigError, check_choice, check_int, fail
from sapo_lightning.seeds import derive_seed
from sapo_lightning.text.task import PromptTask

__all__ = ["ANSWER_FORMATS", "ReasoningGymTask", "extract", "generate", "score"]

VAL_STREAM = 12  # derive_seed stream of the validation rows' reasoning-gym seed
ANSWER_FORMATS = ("tag", "last_line", "last_number")
INSTRUCTIONS = {  # appended to each question, by answer format
    "tag": "Give only the final answer, between <answer> and </answer> tags.",
    "last_line": "Reply with only the answer.",
    "last_number": "Reply with only the answer.",
}
_NUMBER = re.compile(r"[-+\u2212]?\d+(?:\.\d+)?")  # a number as written: sign, digits, decimals


def _require() -> Any:
    """The reasoning_gym package, or say which extra installs it."""
    try:
        return importlib.import_module("reasoning_gym")
    except ImportError as err:
        raise ConfigError("ReasoningGymTask needs reasoning-gym: pip install 'sapo-lightning[envs]'") from err


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def check_name(name: Any, option: str = "dataset") -> None:
    """Stop with one line naming ``option`` unless ``name`` is a reasoning-gym dataset (close names listed)."""
    names = sorted(_require().factory.DATASETS)
    if name not in names:
        close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.6)
        hint = (f"close names: {', '.join(close)}" if close
                else f"one of {len(names)}, see reasoning_gym.factory.DATASETS")
        fail(option, f"a reasoning-gym dataset name ({hint})", name)


def check_fields(name: str, config: Any, option: str = "config") -> dict[str, Any]:
    """``config`` as a dict of fields of ``name``'s config class (null: {}); one line naming ``option`` if not."""
    config = {} if config is None else config
    if not isinstance(config, dict) or not all(isinstance(key, str) for key in config):
        fail(option, f"a mapping of {name}'s config fields to values, or null", config)
    fields = list(_require().factory.DATASETS[name][1].__dataclass_fields__)
    settable = [field for field in fields if field not in ("size", "seed")]
    unknown = [key for key in config if key not in settable]
    if unknown:
        fail(f"{option}.{unknown[0]}", f"a field of {name}'s config ({', '.join(settable)}; size and seed are the "
             "task's own)", config[unknown[0]])
    return config


def config_of(dataset: str, config: dict[str, Any] | None, dataset_configs: dict[str, Any] | None) -> dict[str, Any]:
    """The config ``dataset`` is built with: its entry in ``dataset_configs``, updated by ``config``; all checked."""
    if dataset_configs is not None and not isinstance(dataset_configs, dict):
        fail("dataset_configs", "a mapping {dataset name: {config fields}}, or null", dataset_configs)
    for name, fields in (dataset_configs or {}).items():
        check_name(name, "dataset_configs")
        check_fields(name, fields, f"dataset_configs.{name}")
    return {**((dataset_configs or {}).get(dataset) or {}), **check_fields(dataset, config)}


def build(name: Any, config: dict[str, Any] | None, size: int, seed: int) -> Any:
    """The reasoning-gym dataset ``name`` with ``config``, ``size`` rows drawn from ``seed``; checked.

    Args:
        name: A name in ``reasoning_gym.factory.DATASETS``.
        config: Fields of that dataset's config class, ``size`` and ``seed`` excepted.
        size: Rows the dataset holds.
        seed: Its seed.
    """
    reasoning_gym = _require()
    check_name(name)
    config = check_fields(name, config)
    try:
        return reasoning_gym.create_dataset(name, size=size, seed=seed, **config)
    except Exception as err:  # a config's validate() raises AssertionError, ValueError, TypeError...
        raise ConfigError(f"config must be a valid config of {name}; got {config!r} ({_one_line(err)})") from None


def generate(dataset: Any, option: str) -> list[dict[str, Any]]:
    """Every row ``{question, answer, metadata}`` of a built dataset, or a ConfigError naming ``option``."""
    try:
        return list(dataset)
    except Exception as err:  # a config that validates but cannot generate
        raise ConfigError(f"config must let {type(dataset).__name__} generate its {option} rows; "
                          f"got {_one_line(err)}") from None


def extract(completion: str, answer_format: str) -> str | None:
    """The answer in a completion, or None where it holds none.

    Args:
        completion: The decoded completion.
        answer_format: ``tag``: the text of the last ``<answer>...</answer>`` (reasoning-gym's own
            ``extract_answer``); ``last_line``: the last non-blank line, stripped; ``last_number``:
            the last number as written (sign and decimals kept, a Unicode minus read as ``-``).
    """
    if answer_format == "tag":
        return _require().utils.extract_answer(completion)
    if answer_format == "last_line":
        lines = [line.strip() for line in completion.splitlines() if line.strip()]
        return lines[-1] if lines else None
    if answer_format == "last_number":
        numbers = _NUMBER.findall(completion)
        return numbers[-1].replace("\u2212", "-").lstrip("+") if numbers else None
    fail("answer_format", f"one of {', '.join(ANSWER_FORMATS)}", answer_format)


@functools.lru_cache(maxsize=8)
def _scorer(name: str, config: str) -> Any:
    """The dataset whose ``score_answer`` scores: built once per (name, JSON config)."""
    return build(name, json.loads(config), size=1, seed=0)


def score(
    prompts: list[str], completions: list[str], entry: Sequence[dict[str, Any]], dataset: str,
    config: dict[str, Any] | None = None, answer_format: str = "tag",
) -> list[float]:
    """A reward function: ``dataset.score_answer(extract(completion), entry)`` for each completion.

    Args:
        prompts: The prompts (not read).
        completions: The decoded completions.
        entry: The column of reasoning-gym rows ``{question, answer, metadata}`` the completions answer.
        dataset: The reasoning-gym dataset's name (an arg).
        config: Its config (an arg): some datasets' ``score_answer`` reads it.
        answer_format: How the answer is read from a completion (:func:`extract`).
    """
    scorer = _scorer(dataset, json.dumps(config or {}, sort_keys=True))
    return [float(scorer.score_answer(extract(c, answer_format), row))
            for c, row in zip(completions, entry, strict=True)]


class ReasoningGymTask(PromptTask):
    """A reasoning-gym dataset, by name and config, as a single-turn text task.

    The training rows are ``reasoning_gym.create_dataset(dataset, size=size, seed=seed, **config)``;
    the validation rows (also the test rows) the same dataset's ``val_size`` rows from a seed
    derived from ``seed``, less those whose question is a training question or repeats an earlier
    validation question (the count dropped is printed), so the two sets are disjoint. Each prompt
    is the question, a blank line and ``instruction``, as one user message of the chat template
    (after ``system_prompt`` when given). A completion's reward is the dataset's own
    ``score_answer`` on the answer read from it (``answer_format``), logged as
    ``train/rewards/score``; evaluation logs its greedy mean (``val/reward``) and the share scoring
    1 (``val/exact_match``). Everything else (batches, shards, tokenizing, stop tokens) is
    :class:`~sapo_lightning.text.task.PromptTask`'s, with the rows in memory.

    Args:
        dataset: A reasoning-gym dataset name (``reasoning_gym.factory.DATASETS``), e.g. ``leg_counting``.
        tokenizer: The tokenizer, as :class:`~sapo_lightning.text.task.PromptTask`'s.
        config: That dataset's config fields (not ``size`` or ``seed``), e.g. ``{max_animals: 3}``;
            null: its defaults.
        dataset_configs: Config fields by dataset name, used when ``dataset`` names one (``config``'s
            fields win): a recipe tunes its dataset and still switches by ``dataset`` alone.
        size: Training rows generated.
        val_size: Validation rows generated before the overlap is dropped; ``data.val_size`` of
            those left are used.
        seed: reasoning-gym seed of the training rows (the validation seed derives from it).
        answer_format: How the answer is read from a completion: ``tag`` (the last
            ``<answer>...</answer>``, reasoning-gym's convention), ``last_line`` or ``last_number``.
        instruction: Text after the question; null: the answer format's default (``tag``: asks for
            the tags; the others: "Reply with only the answer."); "" adds nothing.
        system_prompt: A system message before the question; null: none (the chat template's own
            default, if it has one).
        max_prompt_length: Longest prompt in tokens; longer ones are dropped (counted at start).
        max_new_tokens: Longest completion in tokens.
        chat: Render prompts through the tokenizer's chat template (true for instruct models);
            false: the prompt text as is (``system_prompt`` then must be null).
        too_long: ``drop`` prompts longer than ``max_prompt_length`` or stop with an ``error``.
        stop_token_ids: Token ids that end a completion besides the tokenizer's EOS.
    """

    def __init__(
        self,
        dataset: str,
        tokenizer: str,
        config: dict[str, Any] | None = None,
        dataset_configs: dict[str, dict[str, Any]] | None = None,
        size: int = 1000,
        val_size: int = 256,
        seed: int = 0,
        answer_format: str = "tag",
        instruction: str | None = None,
        system_prompt: str | None = None,
        max_prompt_length: int = 256,
        max_new_tokens: int = 32,
        chat: bool = True,
        too_long: str = "drop",
        stop_token_ids: list[int] | None = None,
    ) -> None:
        check_int("size", size, 1)
        check_int("val_size", val_size, 1)
        check_int("seed", seed, 0)
        check_choice("answer_format", answer_format, ANSWER_FORMATS)
        if system_prompt is not None and not chat:
            fail("system_prompt", "null when chat is false (a system message needs the chat template)", system_prompt)
        self.instruction = INSTRUCTIONS[answer_format] if instruction is None else instruction
        self.system_prompt = system_prompt
        check_name(dataset)
        config = config_of(dataset, config, dataset_configs)
        train = generate(build(dataset, config, size, seed), "training")
        val = generate(build(dataset, config, val_size, derive_seed(seed, VAL_STREAM)), "validation")
        seen = {row["question"] for row in train}
        kept = []
        for row in val:
            if row["question"] not in seen:
                seen.add(row["question"])
                kept.append(row)
        if not kept:
            fail("config", f"a dataset with validation questions outside its {size} training rows "
                 f"(all {val_size} repeat one)", config)
        if len(kept) < len(val):
            rank_zero_info(f"{dataset}: dropped {len(val) - len(kept)} of {val_size} validation rows whose question "
                           "is a training question or repeats one")
        reward = {"function": f"{__name__}.score", "name": "score",
                  "args": {"dataset": dataset, "config": config or {}, "answer_format": answer_format}}
        super().__init__(
            train_file=self._columns(train), val_file=self._columns(kept), tokenizer=tokenizer, rewards=[reward],
            max_prompt_length=max_prompt_length, max_new_tokens=max_new_tokens, chat=chat, too_long=too_long,
            stop_token_ids=stop_token_ids,
        )

    def prompt(self, question: str) -> str | list[dict[str, str]]:
        """The prompt of a question: its text and the instruction, after the system message if any."""
        text = f"{question.rstrip()}\n\n{self.instruction}" if self.instruction else question
        if self.system_prompt is None:
            return text
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": text}]

    def _columns(self, rows: list[dict[str, Any]]) -> dict[str, list]:
        """The prompt, question, answer and entry columns of generated rows."""
        return {"prompt": [self.prompt(row["question"]) for row in rows], "question": [row["question"] for row in rows],
                "answer": [row["answer"] for row in rows], "entry": rows}
