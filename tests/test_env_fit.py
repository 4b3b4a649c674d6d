"""Episodes through the whole loop: every objective, mini- and micro-batches, dynamic sampling, exact resume,
LoRA, export, TextSamples and DDP, on configs/env_tiny.yaml."""

from __future__ import annotations

import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from multiprocess_fit import run_fit  # tests/ is on sys.path under pytest
from sapo_lightning.cli import main
from sapo_lightning.commands import main as commands_main

pytestmark = pytest.mark.slow  # fits

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "env_tiny.yaml")
QUICK = ["--trainer.enable_progress_bar=false", "--data.val_size=4", "--trainer.val_check_interval=4",
         "--trainer.log_every_n_steps=2", "--model.group_size=2", "--data.batch_size=2",
         "--data.task.init_args.max_turns=2", "--data.task.init_args.max_new_tokens=4"]


def fit(root: Path, max_steps: int, *extra: str) -> Path:
    with mock.patch.object(sys, "argv", ["sapo-lightning"]):
        main(["fit", f"--config={CONFIG}", *extra, f"--trainer.default_root_dir={root}",
              f"--trainer.max_steps={max_steps}", *QUICK])
    return root / "lightning_logs"


def scalars(run: Path) -> dict[str, list[float]]:
    (events,) = run.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.mark.parametrize("objective", [None, "grpo", "dapo", "dr_grpo", "gspo", "cispo"])
def test_every_objective_trains_on_episodes_and_logs_the_episode_tags(tmp_path, monkeypatch, objective):
    monkeypatch.chdir(ROOT)  # the config's data and tokenizer paths are relative to the repository
    overlay = [] if objective is None else [f"--config={ROOT / 'configs' / 'objectives' / f'{objective}.yaml'}"]
    logged = scalars(fit(tmp_path, 4, *overlay) / "version_0")
    for tag in ("train/turns", "train/env_token_frac", "train/ended_done", "train/ended_max_turns",
                "train/ended_truncated", "train/turn_reward/1", "train/turn_reward/2", "val/reward", "val/turns",
                "val/solved_turn_1"):
        assert tag in logged, tag
    assert all(1 <= t <= 2 for t in logged["train/turns"])
    assert all(0 < f < 1 for f in logged["train/env_token_frac"])
    ends = [sum(v) for v in zip(*(logged[f"train/ended_{e}"] for e in ("done", "max_turns", "truncated")))]
    assert ends == pytest.approx([1.0] * len(ends))
    assert all(torch.isfinite(torch.tensor(logged["train/loss"])))


def test_mini_micro_batches_and_dynamic_sampling_of_episodes_resume_exactly(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    extra = ["--model.mini_batches=2", "--model.micro_batch_size=1", "--model.filter_groups=true",
             "--model.max_sampling_rounds=2", "--sync.every_n_steps=4"]
    fit(tmp_path / "straight", 8, *extra)
    fit(tmp_path / "split", 4, *extra)
    first = tmp_path / "split" / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    fit(tmp_path / "split", 8, *extra, f"--ckpt_path={first}")
    straight = torch.load(tmp_path / "straight/lightning_logs/version_0/checkpoints/last.ckpt", weights_only=True)
    resumed = torch.load(tmp_path / "split/lightning_logs/version_1/checkpoints/last.ckpt", weights_only=True)
    assert straight["global_step"] == resumed["global_step"] == 8
    assert all(torch.equal(straight["state_dict"][k], resumed["state_dict"][k]) for k in straight["state_dict"])
    assert "train/groups_kept" in scalars(tmp_path / "straight" / "lightning_logs" / "version_0")


def test_text_samples_show_whole_episodes_with_roles(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    run = fit(tmp_path, 4, "--trainer.callbacks.every_n_steps=2") / "version_0"
    (events,) = run.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events), size_guidance={"tensors": 0})
    accumulator.Reload()
    table = accumulator.Tensors("samples/text_summary")[-1].tensor_proto.string_val[0].decode().splitlines()
    prompt, episode, _ = (cell.strip() for cell in table[2].strip("|").split("|"))
    assert prompt.startswith("What is ") and episode.startswith("[assistant] ")
    assert "[user] Wrong. Again:" in episode or "<br>" not in episode  # a second turn follows the feedback


def test_lora_on_episodes_exports_a_model_transformers_generates_with(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = fit(tmp_path, 2, f"--config={ROOT / 'configs' / 'lora.yaml'}") / "version_0"
    with mock.patch.object(sys, "argv", ["sapo-lightning"]):
        commands_main(["export", f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"--output={tmp_path / 'out'}"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = tokenizer("user: What is 1 + 1?\nassistant: ", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] > ids.shape[1]


def test_two_ranks_train_on_episodes_and_agree(tmp_path):
    root = tmp_path / "ddp"
    root.mkdir()
    run_fit(ROOT, f"--config={CONFIG}", f"--config={ROOT / 'configs' / 'ddp.yaml'}",
            f"--trainer.default_root_dir={root}",
            "--trainer.max_steps=4", *QUICK, "--trainer.limit_val_batches=0", "--sync.every_n_steps=2",
            "--trainer.callbacks+=rank_probe.RankProbe", f"--trainer.callbacks.out={root / 'probe'}")
    rank0, rank1 = (torch.load(root / "probe" / f"rank{r}.pt") for r in (0, 1))
    assert torch.equal(rank0["policy"], rank1["policy"])
