"""PromptTask: rewards of decoded completions, evaluation per reward function, stop tokens."""

import json
from pathlib import Path

import pytest
import torch

from sapo_lightning.checks import ConfigError
from sapo_lightning.rollout import Rollout
from sapo_lightning.text.task import PromptTask

ROOT = Path(__file__).resolve().parents[1]
ASCII = str(ROOT / "assets" / "tokenizers" / "ascii")
BUILTIN = "sapo_lightning.text.rewards."


@pytest.fixture
def prompts_file(tmp_path) -> str:
    path = tmp_path / "prompts.jsonl"
    rows = ([{"prompt": f"copy: {w}", "answer": w} for w in ["ab", "cde", "f", "gh"]]
            + [{"prompt": "none", "answer": None}])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def task(prompts_file: str, **kwargs) -> PromptTask:
    rewards = [{"function": BUILTIN + "char_match"}, {"function": BUILTIN + "exact_match", "weight": 0.5}]
    return PromptTask(prompts_file, ASCII, rewards, val_fraction=0.2, **kwargs)


def responses(task: PromptTask, texts: list[str], width: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows [N, width] of ``texts`` followed by EOS, padded; the mask covers the EOS."""
    ids = torch.full((len(texts), width), task.tokenizer.pad_token_id)
    mask = torch.zeros(len(texts), width, dtype=torch.bool)
    for i, text in enumerate(texts):
        row = task.tokenizer.encode(text, add_special_tokens=False) + [task.eos_token]
        ids[i, : len(row)], mask[i, : len(row)] = torch.tensor(row), True
    return ids, mask


def test_rewards_score_the_decoded_completions(prompts_file):
    t = task(prompts_file)
    batch = t.collate([r for r in t.data.train_rows + t.data.val_rows if r["columns"]["answer"] is not None])
    answers = batch.columns["answer"]
    assert len(answers) == 4
    completions = [answers[0][::-1], answers[1], "zz", answers[3] + "x"]
    ids, mask = responses(t, completions)
    assert t.decode(ids, mask) == completions  # the EOS and the padding are not text
    rewards = t.rewards(batch, Rollout(ids, torch.zeros(ids.shape), mask))
    char = torch.tensor([(sum(a == b for a, b in zip(c, r)) + 0.25 * (len(c) == len(r))) / (max(len(c), len(r)) + 0.25)
                         for c, r in zip(completions, answers)])
    exact = torch.tensor([float(c == r) for c, r in zip(completions, answers)])
    torch.testing.assert_close(rewards.terms["char_match"], char)
    torch.testing.assert_close(rewards.total, char + 0.5 * exact)


def test_evaluate_reports_accuracy_per_function_and_skips_those_that_do_not_apply(prompts_file, tmp_path):
    t = task(prompts_file)
    rows = [r for r in t.data.train_rows + t.data.val_rows if r["columns"]["answer"] in ("ab", None)]
    batch = t.collate(rows)  # "copy: ab" and the row with no answer
    order = [r["columns"]["answer"] for r in rows]
    ids, mask = responses(t, ["ab" if a == "ab" else "x" for a in order])
    values = t.evaluate(batch, Rollout(ids, torch.zeros(ids.shape), mask))
    answered = torch.tensor([a is not None for a in order])
    assert values["accuracy/char_match"][answered].tolist() == [1.0]
    assert values["accuracy/char_match"][~answered].isnan().all()  # left out of the mean
    assert values["exact_match"].tolist() == [float(a is not None) for a in order]  # nothing applies: not solved
    assert values["reward"][~answered].tolist() == [0.0]


def test_stop_tokens_and_bad_options(prompts_file):
    t = task(prompts_file, stop_token_ids=[5, 1])
    assert t.stop_token_ids == [t.eos_token, 5]  # the EOS first, no duplicate
    with pytest.raises(ConfigError, match=r"stop_token_ids\[0\] must be an integer in \[0, 100\]; got 101"):
        task(prompts_file, stop_token_ids=[101])
    with pytest.raises(ConfigError, match="max_new_tokens must be an integer >= 1; got 0"):
        task(prompts_file, max_new_tokens=0)
    with pytest.raises(ConfigError, match=r"rewards\[0\].function"):
        PromptTask(prompts_file, ASCII, [{"function": "no_such_module.fn"}])


def test_text_samples_on_a_synthetic_task_is_one_line(tmp_path, capsys, monkeypatch):
    from sapo_lightning.cli import main

    monkeypatch.setattr("sys.argv", ["sapo-lightning"])
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(ROOT / "configs" / "sapo.yaml"), f"--trainer.default_root_dir={tmp_path}",
              "--trainer.callbacks+=sapo_lightning.text.samples.TextSamples"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "TextSamples unless the task is a text task (PromptTask); got 'FixedTarget'" in err
