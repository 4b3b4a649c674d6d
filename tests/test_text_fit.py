"""Text runs end to end through the CLI: exact resume, a failing reward function, pass@k."""

import json
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sapo_lightning.cli import main

pytestmark = pytest.mark.slow  # fits of a tiny text model

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--model.policy=sapo_lightning.lm.policy.CausalLMPolicy",
    '--model.policy.init_args.model_config={"model_type": "llama", "vocab_size": 101, "hidden_size": 16, '
    '"intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, '
    '"max_position_embeddings": 64, "tie_word_embeddings": true, "attention_dropout": 0.0, '
    '"pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}',
    "--model.group_size=4", "--data.batch_size=3", "--data.val_size=6",
    "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=2", "--trainer.val_check_interval=5",
    "--sync.every_n_steps=3",
]


CALLS = []


def failing_reward(prompts, completions, **_):
    """A reward function with a bug that shows at its 6th call: it returns one value too few."""
    CALLS.append(len(completions))
    return [0.0] * (len(completions) - (len(CALLS) == 6))


@pytest.fixture
def prompts(tmp_path) -> str:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"copy: {w}", "answer": w}) + "\n" for w in
                            ["ab", "c", "dd", "efg", "h", "ba", "cc", "gfe", "a", "hh", "bcd", "e"]))
    return str(path)


def task(prompts: str, reward: str = "sapo_lightning.text.rewards.char_match") -> list[str]:
    return [
        "--data.task=sapo_lightning.text.task.PromptTask", f"--data.task.init_args.train_file={prompts}",
        f"--data.task.init_args.tokenizer={ROOT / 'assets' / 'tokenizers' / 'ascii'}",
        f'--data.task.init_args.rewards=[{{"function": "{reward}"}}]', "--data.task.init_args.max_new_tokens=4",
        "--data.task.init_args.max_prompt_length=16", "--data.task.init_args.val_fraction=0.25",
    ]


def fit(root: Path, prompts: str, max_steps: int, *extra: str) -> None:
    args = ["fit", "--config", str(ROOT / "configs" / "sapo.yaml"), *TINY, *task(prompts),
            f"--trainer.default_root_dir={root}", f"--trainer.max_steps={max_steps}", *extra]
    main(args)


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])


def test_a_resumed_text_run_equals_the_uninterrupted_one(tmp_path, prompts):
    fit(tmp_path / "straight", prompts, 16)
    fit(tmp_path / "split", prompts, 8)
    first = tmp_path / "split" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    fit(tmp_path / "split", prompts, 16, f"--ckpt_path={first}")
    straight = torch.load(tmp_path / "straight/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    resumed = torch.load(tmp_path / "split/lightning_logs/version_1/checkpoints/last.ckpt", weights_only=True)
    assert straight["global_step"] == resumed["global_step"] == 16
    # 16 batches of 3 prompts: 5+ epochs
    assert straight["QueryDataModule"] == resumed["QueryDataModule"] == {"next_batch": 16, "seed": 0}
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    assert straight["optimizer_states"][0]["state"][0]["exp_avg"].equal(
        resumed["optimizer_states"][0]["state"][0]["exp_avg"])


def test_a_failing_reward_function_stops_the_run_with_one_line_and_keeps_its_checkpoints(tmp_path, prompts, capsys):
    CALLS.clear()
    with pytest.raises(SystemExit) as exit_:  # calls: 5 training steps, then the validation at step 5
        fit(tmp_path, prompts, 8, *task(prompts, "test_text_fit.failing_reward"), "--checkpoint.every_n_train_steps=2",
            "--trainer.num_sanity_val_steps=0")
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("sapo-lightning: error: reward function failing_reward (rewards[0]) returned 2 values for 3")
    last = torch.load(tmp_path / "lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 4


def test_text_tags_and_pass_at_k(tmp_path, prompts):
    fit(tmp_path, prompts, 10, "--model.pass_k=3")
    (events,) = (tmp_path / "lightning_logs" / "version_0").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    expected = {"train/rewards/char_match", "train/completion_len", "train/completion_len_max", "train/truncated_frac",
                "val/reward", "val/exact_match", "val/accuracy/char_match", "val/pass@3/exact_match",
                "val/pass@3/accuracy/char_match"}
    assert expected <= tags, expected - tags
    for tag in ("train/truncated_frac", "val/accuracy/char_match", "val/pass@3/exact_match"):
        assert all(0.0 <= e.value <= 1.0 for e in accumulator.Scalars(tag))
    assert all(1 <= e.value <= 4 for e in accumulator.Scalars("train/completion_len_max"))  # max_new_tokens


def test_text_samples_panel_shows_prompts_completions_and_rewards(tmp_path, prompts):
    fit(tmp_path, prompts, 4, "--trainer.callbacks+=sapo_lightning.text.samples.TextSamples",
        "--trainer.callbacks.every_n_steps=2", "--trainer.callbacks.num_samples=2")
    (events,) = (tmp_path / "lightning_logs" / "version_0").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0})
    accumulator.Reload()
    panels = accumulator.Tensors("samples/text_summary")
    assert [p.step for p in panels] == [2, 4]
    table = panels[-1].tensor_proto.string_val[0].decode().splitlines()
    assert table[0] == "| prompt | completion | reward |" and len(table) == 2 + 2
    prompt, completion, reward = (cell.strip() for cell in table[2].strip("|").split("|"))
    assert prompt.startswith("copy: ") and 0.0 <= float(reward) <= 1.0


def test_dynamic_sampling_of_prompts_resumes_exactly(tmp_path, prompts):
    """Refill rounds draw more prompts from the dataset (left-padded together with the first round's), three
    mini-batches per rollout: 6 + 6 steps from the end-of-run checkpoint equal 12 in one go."""
    extra = ["--model.filter_groups=true", "--model.max_sampling_rounds=3", "--model.mini_batches=3"]
    fit(tmp_path / "straight", prompts, 12, *extra)
    fit(tmp_path / "split", prompts, 6, *extra)
    first = tmp_path / "split" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    fit(tmp_path / "split", prompts, 12, *extra, f"--ckpt_path={first}")
    straight = torch.load(tmp_path / "straight/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    resumed = torch.load(tmp_path / "split/lightning_logs/version_1/checkpoints/last.ckpt", weights_only=True)
    assert straight["global_step"] == resumed["global_step"] == 12
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    accumulator = EventAccumulator(str(tmp_path / "straight" / "lightning_logs" / "version_0"))
    accumulator.Reload()
    assert max(e.value for e in accumulator.Scalars("train/groups_drawn")) > 3  # more than one round somewhere
