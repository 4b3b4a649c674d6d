"""Prompt datasets, the Prompts batch and the ASCII tokenizer, on tiny files built in tmp_path (offline)."""

import copy
import json
import logging
import re
import runpy
from collections import Counter
from pathlib import Path

import pytest
import torch

pytest.importorskip("datasets")
pytest.importorskip("transformers")
import datasets
import pandas as pd  # a dependency of datasets
import transformers
from tokenizers import processors

from sapo_lightning.checks import ConfigError
from sapo_lightning.rollout import Prompts
from sapo_lightning.text import dataset as dataset_module
from sapo_lightning.text.dataset import PromptDataset
from sapo_lightning.text.prompts import pad_left
from sapo_lightning.text.tokenizer import build_ascii_tokenizer
from sapo_lightning.text.tokenizer import main as tokenizer_main

ASSETS = Path(__file__).resolve().parents[1] / "assets" / "tokenizers" / "ascii"
PRINTABLE = "".join(map(chr, range(32, 127))) + "\n\t"
ROWS = [{"prompt": f"What is {i}+{i}?", "answer": f"a{2 * i}"} for i in range(12)]


def write(path: Path, rows: list[dict]) -> str:
    """``rows`` as a file whose format its suffix says (no suffix: a saved datasets directory)."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        pd.DataFrame(rows).to_csv(path, index=False)
    elif path.suffix == ".parquet":
        pd.DataFrame(rows).to_parquet(path)
    else:
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return str(path)


@pytest.fixture(scope="module")
def ascii_dir(tmp_path_factory) -> str:
    """A fresh ASCII tokenizer, saved by the module's command."""
    path = tmp_path_factory.mktemp("tok") / "ascii"
    tokenizer_main([str(path)])
    return str(path)


def saved(tmp_path: Path, name: str, **kwargs) -> str:
    """The ASCII vocabulary behind a tokenizer with other settings (special tokens, template, post-processor)."""
    backend = copy.deepcopy(build_ascii_tokenizer().backend_tokenizer)
    if kwargs.pop("adds_bos", False):
        backend.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs).save_pretrained(tmp_path / name)
    return str(tmp_path / name)


# -- files -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["p.jsonl", "p.json", "p.csv", "p.parquet", "saved_dataset"])
def test_every_format_reads_the_same_prompts(tmp_path, ascii_dir, name, monkeypatch):
    cache = tmp_path / "hf_cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(cache))  # where load_dataset caches by default
    path = write(tmp_path / name, ROWS)
    data = PromptDataset(path, ascii_dir, 64, val_file=path)
    assert [row["text"] for row in data.train_rows] == [row["prompt"] for row in ROWS]
    assert [row["columns"] for row in data.train_rows] == [{"answer": row["answer"]} for row in ROWS]
    tokenizer = data.tokenizer
    assert [row["input_ids"] for row in data.train_rows] == [tokenizer.encode(row["prompt"]) for row in ROWS]
    assert not cache.exists()  # nothing written to the datasets cache


def test_chat_messages_render_through_the_template_with_the_generation_prompt(tmp_path, ascii_dir):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    rows = [{"prompt": messages, "answer": "4"}, {"prompt": [{"role": "user", "content": "Hi"}], "answer": "x"}]
    expected = ["system: Be brief.\nuser: 2+2?\nassistant: ", "user: Hi\nassistant: "]
    for name in ("chat.jsonl", "chat.parquet"):
        path = write(tmp_path / name, rows)
        data = PromptDataset(path, ascii_dir, 64, val_file=path)
        assert [row["text"] for row in data.train_rows] == expected
        assert data.train_rows[1]["input_ids"] == data.tokenizer.encode(expected[1])
        assert len(data.train_rows[0]["input_ids"]) == len(expected[0])  # one token per character, nothing added


def test_chat_true_wraps_plain_text_as_one_user_message(tmp_path, ascii_dir):
    path = write(tmp_path / "p.jsonl", [{"prompt": "Say hi."}])
    plain = PromptDataset(path, ascii_dir, 64, val_file=path)
    wrapped = PromptDataset(path, ascii_dir, 64, val_file=path, chat=True)
    assert plain.train_rows[0]["text"] == "Say hi."
    assert wrapped.train_rows[0]["text"] == "user: Say hi.\nassistant: "
    assert wrapped.train_rows[0]["columns"] == {}


def test_special_tokens_come_once_from_the_template_or_the_tokenizer(tmp_path):
    bos_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer = saved(tmp_path, "bos", adds_bos=True, eos_token="<eos>", bos_token="<bos>", chat_template=bos_template)
    path = write(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    plain = PromptDataset(path, tokenizer, 64, val_file=path).train_rows[0]
    chat = PromptDataset(path, tokenizer, 64, val_file=path, chat=True).train_rows[0]
    assert plain["input_ids"][0] == 2 and plain["input_ids"].count(2) == 1  # the tokenizer's default adds BOS
    assert chat["text"] == "<bos>hi" and chat["input_ids"].count(2) == 1  # the template wrote it; not added again


# -- batches ---------------------------------------------------------------------------------
def test_pad_left_by_hand():
    ids, mask = pad_left([[5, 6, 7], [8], []], pad_id=9)
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8], [9, 9, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long


def test_collate_left_pads_with_the_tokenizers_pad_id(tmp_path, ascii_dir):
    path = write(tmp_path / "p.jsonl", [{"prompt": "ab", "n": 1}, {"prompt": "c", "n": 2}])
    data = PromptDataset(path, ascii_dir, 64, val_file=path)
    batch = data.collate(data.eval_rows("val", 10, seed=0))
    a, b, c = data.tokenizer.convert_tokens_to_ids(["a", "b", "c"])
    assert batch.input_ids.tolist() == [[a, b], [0, c]]  # <pad> is id 0
    assert batch.attention_mask.tolist() == [[1, 1], [0, 1]]
    assert batch.texts == ["ab", "c"] and batch.columns == {"n": [1, 2]}


def test_prompts_repeat_slice_and_move():
    prompts = Prompts(torch.tensor([[1, 2], [0, 3]]), torch.tensor([[1, 1], [0, 1]]), ["a", "b"], {"x": [10, 20]})
    twice = prompts.repeat_interleave(2)
    assert len(twice) == 4 and twice.texts == ["a", "a", "b", "b"] and twice.columns == {"x": [10, 10, 20, 20]}
    assert twice.input_ids.tolist() == [[1, 2], [1, 2], [0, 3], [0, 3]]
    assert twice.attention_mask.tolist() == [[1, 1], [1, 1], [0, 1], [0, 1]]
    tail = twice[1:3]
    assert tail.texts == ["a", "b"] and tail.columns == {"x": [10, 20]} and tail.input_ids.tolist() == [[1, 2], [0, 3]]
    moved = prompts.to("meta")
    assert moved.input_ids.device.type == moved.attention_mask.device.type == "meta"
    assert moved.texts == prompts.texts and prompts.input_ids.device.type == "cpu"
    with pytest.raises(ValueError):
        prompts.repeat_interleave(2, dim=1)


def test_prompts_cat_left_pads_to_the_widest():
    narrow = Prompts(torch.tensor([[7]]), torch.tensor([[1]]), ["n"], {"x": [1]})
    wide = Prompts(torch.tensor([[1, 2, 3], [0, 4, 5]]), torch.tensor([[1, 1, 1], [0, 1, 1]]), ["a", "b"],
                   {"x": [2, 3]})
    both = Prompts.cat([narrow, wide])
    assert both.input_ids.tolist() == [[0, 0, 7], [1, 2, 3], [0, 4, 5]]
    assert both.attention_mask.tolist() == [[0, 0, 1], [1, 1, 1], [0, 1, 1]]  # the added columns are masked out
    assert both.texts == ["n", "a", "b"] and both.columns == {"x": [1, 2, 3]}


# -- too long --------------------------------------------------------------------------------
def test_long_prompts_are_dropped_and_counted_never_truncated(tmp_path, ascii_dir, monkeypatch):
    messages = []
    monkeypatch.setattr(dataset_module, "rank_zero_info", messages.append)
    path = write(tmp_path / "p.jsonl", [{"prompt": p} for p in ["abc", "abcdefghij", "abcd", "abcdefghijkl"]])
    data = PromptDataset(path, ascii_dir, 5, val_file=path)
    assert [row["text"] for row in data.train_rows] == ["abc", "abcd"]
    assert messages == [
        "train_file: dropped 2 of 4 prompts longer than max_prompt_length=5 tokens",
        "val_file: dropped 2 of 4 prompts longer than max_prompt_length=5 tokens",
    ]
    with pytest.raises(ConfigError, match=r"max_prompt_length must be at least 10, the tokens of train_file line 2"):
        PromptDataset(path, ascii_dir, 5, val_file=path, too_long="error")
    with pytest.raises(ConfigError, match="train_file must be a file with at least one prompt"):
        PromptDataset(path, ascii_dir, 2, val_file=path)



def test_columns_in_memory_serve_as_a_file_does_and_keep_their_values(tmp_path, ascii_dir):
    """A mapping of columns reads as the same rows from a file, and its values reach the batch as they are
    (a tuple inside a dict, which Arrow would turn into a list)."""
    columns = {"prompt": [row["prompt"] for row in ROWS], "answer": [row["answer"] for row in ROWS],
               "entry": [{"range": (i, i + 1)} for i in range(len(ROWS))]}
    in_memory = PromptDataset(columns, ascii_dir, 64, val_file={"prompt": ["hi", "ho"], "answer": [1, 2]})
    from_file = PromptDataset(write(tmp_path / "p.jsonl", ROWS), ascii_dir, 64, val_fraction=0.25)
    assert (sorted(r["text"] for r in in_memory.train_rows)
            == sorted(r["text"] for r in from_file.train_rows + from_file.val_rows))
    batch = in_memory.collate(in_memory.train_rows[:2])
    assert batch.columns["entry"] == [{"range": (0, 1)}, {"range": (1, 2)}]
    assert [r["text"] for r in in_memory.eval_rows("val", 5, 0)] == ["hi", "ho"]
    with pytest.raises(ConfigError, match=r"val_file must be columns of one length \(one value per row\)"):
        PromptDataset(columns, ascii_dir, 64, val_file={"prompt": ["hi"], "answer": [1, 2]})
    with pytest.raises(ConfigError, match=r"train_file must be rows with at least one prompt of at most "
                                          r"max_prompt_length=2 tokens; got '12 rows, all longer'"):
        PromptDataset(columns, ascii_dir, 2, val_file=columns)

# -- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "case, message",
    [
        ("missing_file", "train_file: no such file or directory "),
        ("missing_val_file", "val_file: no such file or directory "),
        ("unknown_suffix", "train_file must be a JSONL"),
        ("malformed", "train_file must be a readable JSON file (line 2, column 2: Expecting property name enclosed in"),
        ("empty", "test_file must be a file with at least one row"),
        ("missing_column", "prompt_column must be a column of train_file (its columns: question); got 'prompt'"),
        (
            "unknown_role",
            "train_file line 2 prompt message 0 role must be one of system, user, assistant, tool; got 'bot'",
        ),
        ("missing_tokenizer", "tokenizer: no such directory "),
        ("tokenizer_file", "tokenizer must be a tokenizer directory (save_pretrained), a hub id, a .gguf file"),
        ("no_eos", "tokenizer must be a tokenizer with an EOS token"),
        ("no_template", "tokenizer must be a tokenizer with a chat template (prompts are chat messages)"),
        ("one_row_split", "val_fraction must be small enough to leave training prompts"),
    ],
)
def test_bad_input_is_a_config_error_naming_the_option(tmp_path, ascii_dir, case, message):
    good = write(tmp_path / "good.jsonl", ROWS)
    args = {"train_file": good, "tokenizer": ascii_dir, "max_prompt_length": 64}
    if case == "missing_file":
        args["train_file"] = str(tmp_path / "nope.jsonl")
    elif case == "missing_val_file":
        args["val_file"] = str(tmp_path / "nope.parquet")
    elif case == "unknown_suffix":
        (tmp_path / "p.txt").write_text("hello\n")
        args["train_file"] = str(tmp_path / "p.txt")
    elif case == "malformed":
        (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{bad\n')
        args["train_file"] = str(tmp_path / "bad.jsonl")
    elif case == "empty":
        (tmp_path / "empty.csv").write_text("")
        args["test_file"] = str(tmp_path / "empty.csv")
    elif case == "missing_column":
        args["train_file"] = write(tmp_path / "q.jsonl", [{"question": "hi"}])
    elif case == "unknown_role":
        chats = [[{"role": "user", "content": "hi"}], [{"role": "bot", "content": "hi"}]]
        args["train_file"] = write(tmp_path / "c.jsonl", [{"prompt": chat} for chat in chats])
    elif case == "missing_tokenizer":
        args["tokenizer"] = str(tmp_path / "no_such_tokenizer")
    elif case == "tokenizer_file":
        args["tokenizer"] = good
    elif case == "no_eos":
        args["tokenizer"] = saved(tmp_path, "no_eos")
    elif case == "no_template":
        args["tokenizer"] = saved(tmp_path, "no_template", eos_token="<eos>")
        args["train_file"] = write(tmp_path / "c.jsonl", [{"prompt": [{"role": "user", "content": "hi"}]}])
    elif case == "one_row_split":
        args["train_file"] = write(tmp_path / "one.jsonl", ROWS[:1])
    with pytest.raises(ConfigError) as error:
        PromptDataset(**args)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_bad_jsonl_line_is_named_as_an_editor_numbers_it(tmp_path, ascii_dir):
    """pyarrow says "row N": from 0, blank lines skipped (and from each 10 MB block's start);
    the error names the line."""
    lines = [json.dumps(row) for row in ROWS]
    lines.insert(3, "")  # a line, no row
    lines[8] = '{"prompt": "What is 7+7?", "answer": }'  # line 9, row 7; the value missing at column 38
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError) as error:
        PromptDataset(str(path), ascii_dir, 64)
    assert str(error.value) == ("train_file must be a readable JSON file (line 9, column 38: Expecting value); "
                                f"got '{path}'")

    chats = [[{"role": "user", "content": "hi"}]] * 3 + [[{"role": "bot", "content": "hi"}]]
    path.write_text("\n" + "".join(json.dumps({"prompt": chat}) + "\n" for chat in chats))  # row 3 on line 5
    with pytest.raises(ConfigError, match=r"^train_file line 5 prompt message 0 role must be one of"):
        PromptDataset(str(path), ascii_dir, 64)

    document = tmp_path / "bad.json"  # one JSON document over lines: json's own line and column
    document.write_text('[\n  {"prompt": "a"},\n  {"prompt": }\n]\n')
    with pytest.raises(ConfigError, match=r"\(line 3, column 14: Expecting value\)"):
        PromptDataset(str(document), ascii_dir, 64)


@pytest.mark.parametrize("suffix, place", [(".jsonl", "line 2"), (".csv", "line 3"), (".json", "row 1"),
                                           (".parquet", "row 1")])
def test_a_row_is_named_by_its_line_where_rows_are_lines(tmp_path, ascii_dir, suffix, place):
    """A CSV's header is line 1; a JSON document on one line and a Parquet file have rows, not lines."""
    path = write(tmp_path / f"p{suffix}", [{"prompt": p} for p in ["abc", "abcdefghij", "ab"]])
    with pytest.raises(ConfigError) as error:
        PromptDataset(path, ascii_dir, 5, too_long="error")
    assert str(error.value) == (f"max_prompt_length must be at least 10, the tokens of train_file {place} "
                                "(or too_long: drop); got 5")


def test_a_missing_relative_path_names_the_working_directory(tmp_path, ascii_dir, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # data/train.jsonl would be found from tmp_path, not from here
    (tmp_path / "data").mkdir()
    write(tmp_path / "data" / "train.jsonl", ROWS)
    with pytest.raises(ConfigError) as error:
        PromptDataset("data/train.jsonl", ascii_dir, 64)
    assert str(error.value) == (
        f"train_file: no such file or directory data/train.jsonl (relative to the working directory {elsewhere})"
    )
    with pytest.raises(ConfigError) as error:
        PromptDataset(str(tmp_path / "data" / "train.jsonl"), str(tmp_path / "tok"), 64)
    assert str(error.value) == f"tokenizer: no such directory {tmp_path / 'tok'}"  # absolute: as given


def test_a_malformed_file_logs_nothing_before_its_error(tmp_path, ascii_dir):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("datasets")  # datasets logs parse errors here, to stderr, before raising
    logger.addHandler(handler)
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\n{bad\n')
    try:
        with pytest.raises(ConfigError, match="train_file must be a readable JSON file"):
            PromptDataset(str(tmp_path / "bad.jsonl"), ascii_dir, 64)
    finally:
        logger.removeHandler(handler)
    assert records == []  # the CLI prints the ConfigError as the one line


def test_eos_pads_when_the_tokenizer_has_no_pad_token(tmp_path):
    path = write(tmp_path / "p.jsonl", ROWS)
    data = PromptDataset(path, saved(tmp_path, "eos_only", eos_token="<eos>"), 64)
    assert data.tokenizer.pad_token_id == data.tokenizer.eos_token_id == 1


# -- splits and sharding ---------------------------------------------------------------------
def test_validation_split_is_fixed_by_split_seed_and_test_defaults_to_it(tmp_path, ascii_dir):
    path = write(tmp_path / "p.jsonl", ROWS)
    data = PromptDataset(path, ascii_dir, 64, val_fraction=0.25)
    train, val = [r["text"] for r in data.train_rows], [r["text"] for r in data.val_rows]
    assert len(val) == 3 and len(train) == 9 and not set(train) & set(val)
    order = [row["prompt"] for row in ROWS]
    assert sorted(train + val, key=order.index) == order
    assert val == sorted(val, key=order.index) and train == sorted(train, key=order.index)  # file order
    assert [r["text"] for r in PromptDataset(path, ascii_dir, 64, val_fraction=0.25).val_rows] == val
    other = {r["text"] for r in PromptDataset(path, ascii_dir, 64, val_fraction=0.25, split_seed=1).val_rows}
    assert other != set(val)
    assert [r["text"] for r in data.eval_rows("val", 2, seed=5)] == val[:2]
    assert data.eval_rows("test", 10, seed=5) == data.eval_rows("val", 10, seed=5)
    test_path = write(tmp_path / "t.csv", ROWS[:2])
    with_test = PromptDataset(path, ascii_dir, 64, val_fraction=0.25, test_file=test_path)
    assert [r["text"] for r in with_test.eval_rows("test", 10, seed=0)] == order[:2]


@pytest.fixture
def eleven(tmp_path, ascii_dir) -> PromptDataset:
    """Eleven training prompts (all of the file: it is its own validation file)."""
    path = write(tmp_path / "p.jsonl", ROWS[:11])
    return PromptDataset(path, ascii_dir, 64, val_file=path)


def stream(data: PromptDataset, batch_size: int, batches: int, seed: int, rank: int, world: int) -> list[str]:
    return [t for i in range(batches) for t in data.train_batch(i, batch_size, seed, rank, world).texts]


def test_train_batch_is_a_pure_function_of_its_arguments(eleven, tmp_path, ascii_dir):
    first = eleven.train_batch(3, 4, 7, 1, 2)
    eleven.train_batch(9, 5, 8, 0, 3)  # other calls in between change nothing
    again = eleven.train_batch(3, 4, 7, 1, 2)
    assert torch.equal(first.input_ids, again.input_ids) and first.texts == again.texts and len(first) == 4
    path = str(tmp_path / "p.jsonl")
    resumed = PromptDataset(path, ascii_dir, 64, val_file=path)  # a restarted run asks for batch 3 first
    assert resumed.train_batch(3, 4, 7, 1, 2).texts == first.texts
    assert eleven.train_batch(3, 4, 8, 1, 2).texts != first.texts  # the seed matters


def test_ranks_take_disjoint_equal_shares_of_each_epoch(eleven):
    world, share = 3, 11 // 3
    for epoch in range(2):
        shares = [eleven.train_batch(epoch, share, seed=4, rank=r, world_size=world).texts for r in range(world)]
        seen = [t for s in shares for t in s]
        assert len(seen) == len(set(seen)) == world * share  # disjoint, 9 of the 11 rows
        order = eleven.train_batch(epoch, 11, seed=4, rank=0, world_size=1).texts  # the epoch's permutation
        assert shares == [order[r::world][:share] for r in range(world)]  # rank r: every 3rd from r


def test_each_epoch_is_a_new_permutation(eleven):
    epoch0, epoch1 = eleven.train_batch(0, 11, 4, 0, 1).texts, eleven.train_batch(1, 11, 4, 0, 1).texts
    assert sorted(epoch0) == sorted(epoch1) == sorted(row["text"] for row in eleven.train_rows)
    assert epoch0 != epoch1


@pytest.mark.parametrize("world", [1, 3])
def test_batches_crossing_epochs_continue_the_ranks_stream(eleven, world):
    share = 11 // world
    for rank in range(world):
        by_epoch = stream(eleven, share, 3, seed=2, rank=rank, world=world)  # the rank's shares of epochs 0, 1, 2
        assert stream(eleven, 4, len(by_epoch) // 4, 2, rank, world) == by_epoch[: len(by_epoch) // 4 * 4]
        assert stream(eleven, 2 * share + 1, 1, 2, rank, world) == by_epoch[: 2 * share + 1]  # one batch, 3 epochs


def test_an_empty_share_is_refused(tmp_path, ascii_dir):
    path = write(tmp_path / "p.jsonl", ROWS[:2])
    data = PromptDataset(path, ascii_dir, 64, val_file=path)
    message = r"train_file must be a file with at least world_size=3 training prompts.*; got 2"
    with pytest.raises(ConfigError, match=message):
        data.train_batch(0, 1, 0, 0, 3)


# -- the ASCII tokenizer ---------------------------------------------------------------------
def test_ascii_tokenizer_round_trips_one_token_per_character():
    tokenizer = build_ascii_tokenizer()
    for text in [PRINTABLE, "  two  spaces , and .\n\tend ", "a<b>c", ""]:
        ids = tokenizer.encode(text)
        assert len(ids) == len(text) and tokenizer.decode(ids) == text
    assert len(tokenizer) == 101 and tokenizer.padding_side == "left"
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (0, 1, 2)
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.bos_token) == ("<pad>", "<eos>", "<bos>")
    assert tokenizer.encode("\t\n ~") == [4, 5, 6, 100] and tokenizer.encode("é") == [tokenizer.unk_token_id]


def test_ascii_chat_template():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    render = build_ascii_tokenizer().apply_chat_template
    assert render(messages, tokenize=False) == "system: Be brief.\nuser: 2+2?\n"
    assert render(messages, add_generation_prompt=True, tokenize=False) == "system: Be brief.\nuser: 2+2?\nassistant: "


def test_shipped_ascii_tokenizer_equals_a_fresh_one():
    shipped, fresh = transformers.AutoTokenizer.from_pretrained(str(ASSETS)), build_ascii_tokenizer()
    assert shipped.get_vocab() == fresh.get_vocab() and shipped.chat_template == fresh.chat_template
    assert shipped.encode(PRINTABLE) == fresh.encode(PRINTABLE) and shipped.decode(fresh.encode(PRINTABLE)) == PRINTABLE
    special = ["pad_token_id", "eos_token_id", "bos_token_id", "unk_token_id", "padding_side"]
    assert [getattr(shipped, name) for name in special] == [getattr(fresh, name) for name in special]


def assert_make_writes_the_shipped_files(folder: Path, tmp_path: Path) -> None:
    """A data folder's make.py writes beside itself: a copy run in tmp_path writes the shipped files byte for byte."""
    (tmp_path / "make.py").write_text((folder / "make.py").read_text())
    runpy.run_path(str(tmp_path / "make.py"), run_name="__main__")
    for name in ("train.jsonl", "val.jsonl"):
        assert (tmp_path / name).read_text() == (folder / name).read_text()


def test_demo_data_is_what_make_writes_split_by_word_length(tmp_path):
    demo = ASSETS.parents[2] / "data" / "text_demo"
    assert_make_writes_the_shipped_files(demo, tmp_path)
    rows = {name: [json.loads(line) for line in open(demo / name)] for name in ("train.jsonl", "val.jsonl")}
    pairs = {name: {(row["op"], row["prompt"].split(": ", 1)[1]) for row in found} for name, found in rows.items()}
    assert len(pairs["train.jsonl"]) == 4000 and len(pairs["val.jsonl"]) == 400  # unique pairs
    assert not pairs["train.jsonl"] & pairs["val.jsonl"]
    lengths = {name: Counter(len(word) for _, word in found) for name, found in pairs.items()}
    # every word length holds out its 1/11 share (largest remainders): 16 one-letter pairs give 1
    assert lengths["val.jsonl"] == {1: 1, 2: 12, 3: 78, 4: 145, 5: 164}
    for length, held in lengths["val.jsonl"].items():
        assert abs(held - (held + lengths["train.jsonl"][length]) / 11) < 1


def test_arithmetic_data_is_what_make_writes_disjoint_with_256_validation_sums(tmp_path):
    data = ASSETS.parents[2] / "data" / "arithmetic"  # the SmolLM2 recipe's prompts
    assert_make_writes_the_shipped_files(data, tmp_path)
    rows = {name: [json.loads(line) for line in open(data / name)] for name in ("train.jsonl", "val.jsonl")}
    pairs = {name: [tuple(map(int, re.findall(r"\d+", row["prompt"]))) for row in found]
             for name, found in rows.items()}
    assert len(set(pairs["val.jsonl"])) == 256 and len(set(pairs["train.jsonl"])) == 4096
    assert not set(pairs["val.jsonl"]) & set(pairs["train.jsonl"])
    for name, found in rows.items():
        for (a, b), row in zip(pairs[name], found):
            assert 10 <= a <= 99 and 10 <= b <= 99 and row["answer"] == a + b  # no operand equals the sum
