"""Prompts from local files: rendered through the tokenizer's chat template, tokenized once, served in shards.

Needs the ``[hf]`` extra (``pip install "sapo-lightning[hf]"``) for ``datasets`` and ``transformers``.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info

from sapo_lightning.checks import ConfigError, check_choice, check_int, check_number, fail, missing_path
from sapo_lightning.pretrained import resolve
from sapo_lightning.rollout import Prompts
from sapo_lightning.seeds import derive_seed
from sapo_lightning.text.file_lines import json_error, row_lines, where
from sapo_lightning.text.prompts import pad_left

EPOCH_STREAM = 10  # derive_seed stream of each epoch's permutation of the training rows
SPLIT_STREAM = 11  # derive_seed stream of the train/validation split of train_file
ROLES = ("system", "user", "assistant", "tool")
TOO_LONG = ("drop", "error")
BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}  # suffix -> datasets builder
FILES = "a JSONL, JSON, CSV or Parquet file, or a directory saved by datasets (Dataset.save_to_disk)"


def _require(module: str) -> Any:
    """Import an optional dependency, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"PromptDataset needs {module}: pip install 'sapo-lightning[hf]'") from err


def _first_line(err: BaseException) -> str:
    """What went wrong, in one line: errors print as one line."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


@contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """No progress bars or logged errors while reading a file: its errors become one ConfigError."""
    enabled, verbosity = datasets.is_progress_bar_enabled(), datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if enabled:
            datasets.enable_progress_bars()


def read_columns(option: str, path: str) -> dict[str, list]:
    """The columns of a local file or saved dataset, by name, values in file order; writes no cache."""
    datasets = _require("datasets")
    if not os.path.exists(path):
        missing_path(option, path, "file or directory")
    if os.path.isdir(path):
        try:
            data = datasets.load_from_disk(path, keep_in_memory=True)
        except FileNotFoundError:
            fail(option, FILES, path)
        if isinstance(data, datasets.DatasetDict):
            fail(option, f"one saved Dataset, not a DatasetDict (its splits: {', '.join(data)})", path)
        return data.to_dict()
    builder = BUILDERS.get(os.path.splitext(path)[1].lower())
    if builder is None or not os.path.isfile(path):
        fail(option, FILES, path)
    if os.path.getsize(path) == 0:
        fail(option, "a file with at least one row", path)
    # the builder writes Arrow files to cache_dir; a temporary one keeps ~/.cache clean
    with tempfile.TemporaryDirectory() as cache, _quiet(datasets):
        try:
            data = datasets.load_dataset(
                builder, data_files=os.path.abspath(path), split="train", cache_dir=cache, keep_in_memory=True
            )
        except Exception as err:  # parsers raise many types: DatasetGenerationError, ArrowInvalid, StopIteration
            why = (json_error(path) if builder == "json" else None) or _first_line(err.__cause__ or err)
            fail(option, f"a readable {builder.upper()} file ({why})", path)
        return data.to_dict()


def load_tokenizer(path: str) -> Any:
    """A tokenizer (a directory, hub id or GGUF file: :func:`~sapo_lightning.pretrained.resolve`), with an EOS
    token, and EOS as pad when it has no pad token."""
    transformers = _require("transformers")
    source = resolve("tokenizer", path)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as err:
        fail("tokenizer", f"a directory with a saved tokenizer ({_first_line(err)})", path)
    if tokenizer.eos_token_id is None:
        fail("tokenizer", "a tokenizer with an EOS token (responses end with it)", path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _messages(where: str, prompt: Any) -> list[dict]:
    """A prompt's chat messages, checked; keys that Arrow filled with None (absent in the file) are dropped."""
    if not isinstance(prompt, list) or not all(isinstance(message, dict) for message in prompt):
        fail(where, "text or a list of chat messages {role, content}", prompt)
    messages = [{key: value for key, value in message.items() if value is not None} for message in prompt]
    for j, message in enumerate(messages):
        check_choice(f"{where} message {j} role", message.get("role"), ROLES)
    return messages


class PromptDataset:
    """Prompts for reinforcement learning on text, read from local files.

    Each row's prompt is plain text or a list of chat messages ``{role, content}`` (roles:
    system, user, assistant, tool). Messages go through the tokenizer's chat template with the
    generation prompt; plain text is used as is (or as one user message when ``chat``). Every
    prompt is tokenized once, at load; a prompt is never truncated. The file's other columns
    (answers, test cases...) travel with each prompt to the reward functions.

    Instead of a file, each of ``train_file``, ``val_file`` and ``test_file`` may be columns held in
    memory (a mapping of column name to one value per row), as a task that generates its prompts
    passes them; their values are kept as they are (no Arrow conversion).

    Training: each epoch is a permutation of the training rows drawn from the run's seed; rank r
    of W takes every W-th row of it from r on (all ranks the same count), and batch i of a rank
    is items [i·B, (i+1)·B) of its rows of epoch 0, 1, 2... in turn, so a resumed run sees the
    same batches. Validation and test rows are used in file order.

    Args:
        train_file: Training prompts: a local ``.jsonl``, ``.json``, ``.csv`` or ``.parquet`` file,
            or a directory written by ``datasets.Dataset.save_to_disk``.
        tokenizer: The tokenizer: a ``save_pretrained`` directory (e.g. ``assets/tokenizers/ascii``), a hub
            id, a ``.gguf`` file or ``pkg:PACKAGE/FILE.gguf``, as a policy's ``path``.
            It must have an EOS token; its EOS pads when it has no pad token.
        max_prompt_length: Most tokens a prompt may have (chat template included).
        val_file: Validation prompts, in the same formats; null: hold out ``val_fraction`` of
            ``train_file``.
        val_fraction: Share of ``train_file`` held out for validation when there is no
            ``val_file``, in (0, 1); at least one row.
        split_seed: Seed of that hold-out split (not the run's seed, so resuming keeps it).
        test_file: Test prompts; null: the test stage uses the validation prompts.
        prompt_column: Column holding each prompt; None: no prompts, only rows (an environment writes
            each episode's first prompt from its row).
        chat: Wrap plain-text prompts as one user message and apply the chat template.
        too_long: Prompts over ``max_prompt_length``: ``drop`` them (the count is printed) or
            ``error``.
    """

    def __init__(
        self,
        train_file: str | Mapping[str, Sequence],
        tokenizer: str,
        max_prompt_length: int,
        val_file: str | Mapping[str, Sequence] | None = None,
        val_fraction: float = 0.1,
        split_seed: int = 0,
        test_file: str | Mapping[str, Sequence] | None = None,
        prompt_column: str | None = "prompt",
        chat: bool = False,
        too_long: str = "drop",
    ) -> None:
        self.max_prompt_length = check_int("max_prompt_length", max_prompt_length, 1)
        self.val_fraction = check_number("val_fraction", val_fraction, 0, 1, low_open=True, high_open=True)
        self.split_seed = check_int("split_seed", split_seed, 0)
        self.too_long = check_choice("too_long", too_long, TOO_LONG)
        self.prompt_column, self.chat = prompt_column, chat
        self.tokenizer = load_tokenizer(tokenizer)
        self.tokenizer_path = tokenizer
        self.train_rows = self._load("train_file", train_file)
        if val_file is None:
            self.train_rows, self.val_rows = self._split(self.train_rows)
        else:
            self.val_rows = self._load("val_file", val_file)
        self.test_rows = self.val_rows if test_file is None else self._load("test_file", test_file)
        self._permutations: dict[tuple[int, int], list[int]] = {}  # (seed, epoch) -> order, the two latest drawn

    # -- loading -----------------------------------------------------------------------------
    def _load(self, option: str, source: str | Mapping[str, Sequence]) -> list[dict]:
        """Rows ``{"input_ids", "text", "columns"}`` of one file or of columns in memory, in order, too long ones
        dropped."""
        if isinstance(source, Mapping):
            columns = {name: list(values) for name, values in source.items()}
            lengths = {len(values) for values in columns.values()}
            if len(lengths) > 1:
                fail(option, "columns of one length (one value per row)", {k: len(v) for k, v in columns.items()})
        else:
            columns = read_columns(option, source)
        if self.prompt_column is None:  # rows for environments, which write the prompts themselves
            count = len(next(iter(columns.values()), []))
            return [{"input_ids": [], "text": "", "columns": {name: values[i] for name, values in columns.items()}}
                    for i in range(count)]
        if self.prompt_column not in columns:
            fail("prompt_column", f"a column of {option} (its columns: {', '.join(columns)})", self.prompt_column)
        prompts = columns.pop(self.prompt_column)
        lines = None if isinstance(source, Mapping) else row_lines(source, len(prompts))
        rendered = [self._render(f"{where(option, lines, i)} {self.prompt_column}", p) for i, p in enumerate(prompts)]
        ids = self._tokenize(rendered)
        rows = [
            {"input_ids": row_ids, "text": text, "columns": {name: values[i] for name, values in columns.items()}}
            for i, ((text, _), row_ids) in enumerate(zip(rendered, ids))
        ]
        return self._filter(option, source, rows, lines)

    def _render(self, where: str, prompt: Any) -> tuple[str, bool]:
        """The text the policy reads, and whether the chat template wrote it."""
        if isinstance(prompt, str) and not self.chat:
            return prompt, False
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else _messages(where, prompt)
        if self.tokenizer.chat_template is None:
            why = "prompts are chat messages" if not isinstance(prompt, str) else "chat is true"
            fail("tokenizer", f"a tokenizer with a chat template ({why})", self.tokenizer_path)
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), True

    def _tokenize(self, rendered: list[tuple[str, bool]]) -> list[list[int]]:
        """Token ids of each text: special tokens as the template wrote them, else as the tokenizer adds them."""
        ids: list[list[int]] = [[] for _ in rendered]
        for templated in (False, True):
            picked = [i for i, (_, flag) in enumerate(rendered) if flag == templated]
            if picked:
                texts = [rendered[i][0] for i in picked]
                encoded = self.tokenizer(texts, add_special_tokens=not templated)["input_ids"]
                for i, row_ids in zip(picked, encoded):
                    ids[i] = row_ids
        return ids

    def _filter(self, option: str, source: str | Mapping[str, Sequence], rows: list[dict],
                lines: list[int] | None) -> list[dict]:
        """The rows of at most ``max_prompt_length`` tokens; longer ones dropped (counted) or refused.

        ``lines``: each row's line in the file ``source`` (:func:`~sapo_lightning.text.file_lines.row_lines`), to
        name it; None: rows are named by their index.
        """
        limit = self.max_prompt_length
        empty = [i for i, row in enumerate(rows) if not row["input_ids"]]
        if empty:
            fail(f"{where(option, lines, empty[0])} {self.prompt_column}", "a prompt of at least one token",
                 rows[empty[0]]["text"])
        long = [i for i, row in enumerate(rows) if len(row["input_ids"]) > limit]
        if long and self.too_long == "error":
            longest = f"{len(rows[long[0]]['input_ids'])}, the tokens of {where(option, lines, long[0])}"
            fail("max_prompt_length", f"at least {longest} (or too_long: drop)", limit)
        if long:
            dropped = f"dropped {len(long)} of {len(rows)} prompts longer than max_prompt_length={limit} tokens"
            rank_zero_info(f"{option}: {dropped}")
        kept = [row for row in rows if len(row["input_ids"]) <= limit]
        if not kept:
            need = f"at least one prompt of at most max_prompt_length={limit} tokens"
            if isinstance(source, Mapping):
                fail(option, f"rows with {need}", f"{len(rows)} rows, all longer")
            fail(option, f"a file with {need}", source)
        return kept

    def _split(self, rows: list[dict]) -> tuple[list[dict], list[dict]]:
        """Training and validation rows of ``train_file``, each in file order, drawn from ``split_seed`` alone."""
        held_out = max(1, round(len(rows) * self.val_fraction))
        if held_out >= len(rows):
            fail("val_fraction", f"small enough to leave training prompts out of {len(rows)}", self.val_fraction)
        generator = torch.Generator().manual_seed(derive_seed(self.split_seed, SPLIT_STREAM))
        val = set(torch.randperm(len(rows), generator=generator)[:held_out].tolist())
        return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]

    # -- serving (the Task methods) ----------------------------------------------------------
    def _permutation(self, seed: int, epoch: int) -> list[int]:
        """Epoch ``epoch``'s order of the training rows, the same on every rank; cached."""
        key = (seed, epoch)
        if key not in self._permutations:
            generator = torch.Generator().manual_seed(derive_seed(seed, epoch, EPOCH_STREAM))
            self._permutations[key] = torch.randperm(len(self.train_rows), generator=generator).tolist()
            if len(self._permutations) > 2:  # a batch spans at most the current and next epoch, mostly
                del self._permutations[next(iter(self._permutations))]
        return self._permutations[key]

    def train_batch(self, index: int, batch_size: int, seed: int, rank: int, world_size: int) -> Prompts:
        """Training batch ``index`` of ``rank``: a pure function of the arguments."""
        share = len(self.train_rows) // world_size  # rows per rank and epoch; the rest sit the epoch out
        if share == 0:
            need = f"a file with at least world_size={world_size} training prompts, one per rank (after filtering)"
            fail("train_file", need, len(self.train_rows))
        rows = []
        for position in range(index * batch_size, (index + 1) * batch_size):
            epoch, offset = divmod(position, share)
            rows.append(self.train_rows[self._permutation(seed, epoch)[rank + offset * world_size]])
        return self.collate(rows)

    def eval_rows(self, stage: str, size: int, seed: int) -> list[dict]:
        """The first ``size`` ``val`` or ``test`` rows in file order (``seed`` is not used)."""
        check_choice("stage", stage, ("val", "test"))
        return (self.val_rows if stage == "val" else self.test_rows)[:size]

    def collate(self, rows: Sequence[dict]) -> Prompts:
        """Rows as one left-padded batch."""
        input_ids, attention_mask = pad_left([row["input_ids"] for row in rows], self.tokenizer.pad_token_id)
        names = rows[0]["columns"] if rows else {}
        columns = {name: [row["columns"][name] for row in rows] for name in names}
        return Prompts(input_ids, attention_mask, [row["text"] for row in rows], columns)
