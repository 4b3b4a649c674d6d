"""reasoning-gym datasets as tasks: rows by name and config, disjoint splits, score_answer rewards, the CLI."""

import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

pytest.importorskip("reasoning_gym")
pytest.importorskip("transformers")
import reasoning_gym

from sapo_lightning.checks import ConfigError
from sapo_lightning.cli import main
from sapo_lightning.envs.reasoning_gym import ReasoningGymTask, extract, score
from sapo_lightning.rollout import Rollout

ROOT = Path(__file__).resolve().parents[1]
ASCII = str(ROOT / "assets" / "tokenizers" / "ascii")
RECIPE = ROOT / "configs" / "smollm2_reasoning_gym.yaml"
TAG = "Give only the final answer, between <answer> and </answer> tags."


def task(dataset: str = "leg_counting", **kwargs) -> ReasoningGymTask:
    """A small task over the ASCII tokenizer (one token a character: prompts of a few hundred tokens)."""
    return ReasoningGymTask(dataset, ASCII, **{"size": 40, "val_size": 16, "max_prompt_length": 600, **kwargs})


def questions(prompts) -> list[str]:
    return [entry["question"] for entry in prompts.columns["entry"]]


def responses(t: ReasoningGymTask, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows of ``texts`` followed by EOS, padded; the mask covers the EOS."""
    width = max(map(len, texts)) + 1
    ids = torch.full((len(texts), width), t.tokenizer.pad_token_id)
    mask = torch.zeros(len(texts), width, dtype=torch.bool)
    for i, text in enumerate(texts):
        row = t.tokenizer.encode(text, add_special_tokens=False) + [t.eos_token]
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), True
    return ids, mask


def test_a_dataset_by_name_gives_reasoning_gyms_rows_as_chat_prompts():
    t = task(config={"max_animals": 4})
    generated = list(reasoning_gym.create_dataset("leg_counting", size=40, seed=0, max_animals=4))
    epoch = t.train_batch(0, 40, seed=3, rank=0, world_size=1)  # one epoch: every training row once
    assert Counter(questions(epoch)) == Counter(row["question"] for row in generated)
    by_question = {row["question"]: row for row in generated}
    for text, entry, answer in zip(epoch.texts, epoch.columns["entry"], epoch.columns["answer"]):
        assert entry == by_question[entry["question"]] and answer == entry["answer"]
        user = f"{entry['question'].rstrip()}\n\n{TAG}"
        assert text == t.tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True,
                                                       tokenize=False)


def test_instruction_and_system_prompt_make_the_prompt():
    t = task(instruction="", system_prompt="Be brief.", answer_format="last_line")
    (row,) = t.eval_rows("val", 1, 0)
    entry = t.collate([row]).columns["entry"][0]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": entry["question"]}]
    assert t.collate([row]).texts[0] == t.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                                        tokenize=False)
    assert "Reply with only the answer." in t.collate(task(answer_format="last_number").eval_rows("val", 1, 0)).texts[0]


def test_validation_rows_are_disjoint_from_training_and_fixed():
    # 25 pairs (a, b) in [1, 5]: 30 training and 30 validation rows must overlap
    config = {"min_value": 1, "max_value": 5}
    t = task("gcd", config=config, size=30, val_size=30)
    train = set(questions(t.train_batch(0, 30, seed=0, rank=0, world_size=1)))
    val = questions(t.collate(t.eval_rows("val", 30, 0)))
    assert 0 < len(val) < 30  # some dropped, some left
    assert not train & set(val) and len(set(val)) == len(val)
    assert val == questions(t.collate(t.eval_rows("test", 30, 0)))  # the test stage uses them too
    assert val == questions(t.collate(task("gcd", config=config, size=30, val_size=30).eval_rows("val", 30, 0)))
    with pytest.raises(ConfigError, match="config must be a dataset with validation questions outside its 30 "
                                          r"training rows \(all 30 repeat one\)"):
        task("gcd", config={"min_value": 1, "max_value": 2}, size=30, val_size=30)  # 4 questions


def test_the_reward_is_the_datasets_score_of_the_extracted_answer():
    t = task()
    batch = t.collate(t.eval_rows("val", 4, 0))
    answers = batch.columns["answer"]
    wrong = str(int(answers[1]) + 1)
    completions = [f"Thinking.\n<answer>{answers[0]}</answer>", f"<answer>{wrong}</answer>",
                   f"<answer>{answers[2]} legs</answer>", answers[3]]  # partial credit; no tag
    ids, mask = responses(t, completions)
    rewards = t.rewards(batch, Rollout(ids, torch.zeros(ids.shape), mask))
    dataset = reasoning_gym.create_dataset("leg_counting")
    expected = [dataset.score_answer(extract(c, "tag"), e) for c, e in zip(completions, batch.columns["entry"])]
    assert expected[:2] == [1.0, 0.0] and 0 < expected[2] < 1 and expected[3] == 0.0
    assert rewards.total.tolist() == pytest.approx(expected)
    assert rewards.terms["score"].tolist() == pytest.approx(expected)
    values = t.evaluate(batch, Rollout(ids, torch.zeros(ids.shape), mask))
    assert values["exact_match"].tolist() == [1.0, 0.0, 0.0, 0.0]  # score == 1
    assert values["reward"].tolist() == pytest.approx(expected)


def test_dataset_configs_apply_to_the_named_dataset_only_and_config_wins():
    """A recipe's tuned config for one dataset leaves another dataset at its defaults."""
    tuned = {"gcd": {"max_value": 9}, "leg_counting": {"min_animals": 1, "max_animals": 1}}

    def numbers(t: ReasoningGymTask) -> set[int]:
        epoch = questions(t.train_batch(0, 40, seed=0, rank=0, world_size=1))
        return {int(n) for q in epoch for n in re.findall(r"\d+", q.split(":")[1])}

    assert max(numbers(task("gcd", dataset_configs=tuned, val_size=64))) <= 9
    assert max(numbers(task("gcd", dataset_configs=tuned, config={"max_value": 99}, val_size=64))) > 9  # config wins
    assert max(numbers(task("gcd"))) > 99  # no entry, no config: gcd's default, numbers up to 1000
    chain = questions(task("chain_sum", dataset_configs=tuned).train_batch(0, 40, seed=0, rank=0, world_size=1))
    assert chain == questions(task("chain_sum").train_batch(0, 40, seed=0, rank=0, world_size=1))


def test_the_score_uses_the_configured_dataset():
    """decimal_arithmetic accepts an answer within one unit of its max_num_decimal_places:
    0.1 here, 0.001 by default."""
    config = {"min_num_decimal_places": 1, "max_num_decimal_places": 1}
    entry = reasoning_gym.create_dataset("decimal_arithmetic", size=1, seed=0, **config)[0]
    near = f"<answer>{float(entry['answer']) + 0.05:.4f}</answer>"
    assert score([""], [near], [entry], "decimal_arithmetic", config) == [1.0]
    assert score([""], [near], [entry], "decimal_arithmetic") == [0.0]


@pytest.mark.parametrize(("text", "tag", "last_line", "last_number"), [
    ("<answer>12</answer>", "12", "<answer>12</answer>", "12"),
    ("I think <answer> a </answer> or <answer>b c</answer>.\n", "b c",
     "I think <answer> a </answer> or <answer>b c</answer>.", None),
    ("Legs: 4 + 8 = 12\n\nSo 12.\n  \n", None, "So 12.", "12"),
    ("x = \u22123.5, y = +2", None, "x = \u22123.5, y = +2", "2"),
    ("It is \u22123.5", None, "It is \u22123.5", "-3.5"),
    ("<answer>7", None, "<answer>7", "7"),  # an unclosed tag is no answer
    ("", None, None, None),
])
def test_extraction_modes(text, tag, last_line, last_number):
    assert extract(text, "tag") == tag
    assert extract(text, "last_line") == last_line
    assert extract(text, "last_number") == last_number


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dataset": "leg_countin"}, "dataset must be a reasoning-gym dataset name (close names: leg_counting, "),
    ({"dataset": "zzz"}, "dataset must be a reasoning-gym dataset name (one of "),
    ({"config": {"max_animal": 3}}, ("config.max_animal must be a field of leg_counting's config (min_animals, "
                                     "max_animals, min_instances, max_instances; size and seed are the task's own)")),
    ({"config": {"seed": 3}}, "config.seed must be a field of leg_counting's config"),
    ({"config": {"min_animals": 5, "max_animals": 2}}, ("config must be a valid config of leg_counting; got "
     "{'min_animals': 5, 'max_animals': 2} (AssertionError: max_animals must be >= min_animals)")),
    ({"answer_format": "boxed"}, "answer_format must be one of tag, last_line, last_number; got 'boxed'"),
    ({"dataset_configs": {"leg_countin": {}}}, "dataset_configs must be a reasoning-gym dataset name (close names: "),
    ({"dataset_configs": {"gcd": {"max_animals": 3}}},
     "dataset_configs.gcd.max_animals must be a field of gcd's config"),
    ({"dataset_configs": [3]}, "dataset_configs must be a mapping {dataset name: {config fields}}, or null; got [3]"),
    ({"size": 0}, "size must be an integer >= 1; got 0"),
    ({"chat": False, "system_prompt": "Hi."}, "system_prompt must be null when chat is false"),
])
def test_bad_options_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError) as error:
        task(**kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.fixture
def plain_argv(monkeypatch):
    """LightningCLI warns when pytest's own argv sits beside the args it is given."""
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])


def test_an_unknown_dataset_through_the_cli_is_one_line_and_writes_nothing(tmp_path, capsys, plain_argv):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(RECIPE), "--data.task.init_args.dataset=leg_countin",
              "--trainer.default_root_dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("sapo-lightning: error: dataset must be a reasoning-gym dataset name (close "
                                       "names: leg_counting, letter_counting, rectangle_count, countdown); got "
                                       "'leg_countin'\n")
    assert list(tmp_path.iterdir()) == []


TINY = ('{"model_type": "llama", "vocab_size": 101, "hidden_size": 16, "intermediate_size": 32, '
        '"num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, '
        '"max_position_embeddings": 640, "tie_word_embeddings": true, '
        '"attention_dropout": 0.0, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}')


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["leg_counting", "chain_sum", "letter_counting"])
def test_the_recipe_trains_on_any_dataset_switching_the_dataset_key_alone(tmp_path, plain_argv, dataset):
    """The recipe with a tiny stand-in model and the ASCII tokenizer: two steps, then validation,
    whatever the dataset."""
    main(["fit", "--config", str(RECIPE), f"--data.task.init_args.dataset={dataset}",
          "--model.policy.init_args.path=null", f"--model.policy.init_args.model_config={TINY}",
          f"--data.task.init_args.tokenizer={ASCII}", "--data.task.init_args.max_prompt_length=600",
          "--data.task.init_args.size=16", "--data.task.init_args.val_size=8", "--data.val_size=4",
          "--data.batch_size=2", "--model.group_size=2", "--trainer.max_steps=2", "--trainer.val_check_interval=2",
          "--trainer.log_every_n_steps=1", "--trainer.enable_progress_bar=false",
          "--trainer.default_root_dir", str(tmp_path)])
    run = tmp_path / "lightning_logs" / "version_0"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    saved = yaml.safe_load((run / "config.yaml").read_text())["data"]["task"]["init_args"]
    assert saved["dataset"] == dataset
    events = EventAccumulator(str(run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/rewards/score", "val/reward", "val/exact_match", "val/accuracy/score"} <= tags, tags
    assert all(0.0 <= e.value <= 1.0 for e in events.Scalars("val/reward"))
