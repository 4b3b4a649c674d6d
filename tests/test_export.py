"""``sapo-lightning export``: a run's checkpoint to a plain ``transformers`` directory."""

import json
import os
import stat
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import huggingface_hub.constants  # a dependency of transformers
import transformers

from sapo_lightning.commands import main

ROOT = Path(__file__).resolve().parents[1]
LLAMA = {"model_type": "llama", "vocab_size": 101, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 256, "bos_token_id": 2,
         "eos_token_id": 1, "pad_token_id": 0, "attention_dropout": 0.0}


@pytest.fixture(autouse=True)
def offline_plain_argv(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])  # LightningCLI warns about pytest's own argv


def text_fit_args(tmp_path: Path) -> list[str]:
    """A 2-step text fit of CausalLMPolicy on a tiny Llama, prompts "i+i=" with their answers."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{i}+{i}=", "answer": str(2 * i)}) + "\n" for i in range(12)))
    policy = {"class_path": "sapo_lightning.lm.policy.CausalLMPolicy",
              "init_args": {"model_config": LLAMA, "temperature": 0.9, "top_k": 50}}
    task = {"class_path": "sapo_lightning.text.task.PromptTask",
            "init_args": {"train_file": str(prompts), "tokenizer": str(ROOT / "assets" / "tokenizers" / "ascii"),
                          "rewards": [{"function": "sapo_lightning.text.rewards.numeric_answer"}],
                          "max_new_tokens": 8, "max_prompt_length": 16, "val_fraction": 0.25}}
    return ["fit", "--config", str(ROOT / "configs" / "sapo.yaml"), f"--model.policy={json.dumps(policy)}",
            f"--data.task={json.dumps(task)}", "--data.batch_size=2", "--data.val_size=2", "--model.group_size=2",
            "--trainer.max_steps=2", f"--trainer.default_root_dir={tmp_path / 'run'}",
            "--trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_export_of_a_text_fit_loads_with_plain_transformers(tmp_path):
    main(text_fit_args(tmp_path))
    checkpoints = tmp_path / "run" / "lightning_logs" / "version_0" / "checkpoints"
    # the weights a random model barely moves in 2 steps, shifted: the export must hold the checkpoint's
    saved = torch.load(checkpoints / "last.ckpt", weights_only=True)
    saved["state_dict"] = {k: v + 1 if k.startswith("policy.") else v for k, v in saved["state_dict"].items()}
    torch.save(saved, checkpoints / "shifted.ckpt")
    previous = os.umask(0o002)
    try:
        main(["export", "--ckpt_path", str(checkpoints / "shifted.ckpt"), "--output", str(tmp_path / "out")])
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "out").iterdir()}
    assert "model.safetensors" in modes and set(modes.values()) == {0o664}, modes  # safetensors alone writes 0600
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out")
    assert type(model).__name__ == "LlamaForCausalLM"
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved["state_dict"][f"policy.model.{name}"]), name
    assert tokenizer.decode(tokenizer.encode("3+3=6")) == "3+3=6"


def run_dir(tmp_path: Path) -> Path:
    """A run's layout without a run: a checkpoint file and its config.yaml, enough for the checks."""
    checkpoints = tmp_path / "version_0" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_bytes(b"")
    (tmp_path / "version_0" / "config.yaml").write_text("seed_everything: 0\n")
    return checkpoints / "last.ckpt"


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing-ckpt", "ckpt_path: no such file {tmp}/nope.ckpt"),
        ("missing-config", "config must be the run's config.yaml (by default the one in the checkpoint's version "
                           "directory); got '{tmp}/version_0/config.yaml'"),
        ("non-empty-output", "output must be a new or empty directory; got '{tmp}/out'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, case, message):
    checkpoint = run_dir(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    args = {"missing-ckpt": ["--ckpt_path", str(tmp_path / "nope.ckpt"), "--output", str(tmp_path / "new")],
            "missing-config": ["--ckpt_path", str(checkpoint), "--output", str(tmp_path / "new")],
            "non-empty-output": ["--ckpt_path", str(checkpoint), "--output", str(tmp_path / "out")]}[case]
    if case == "missing-config":
        (tmp_path / "version_0" / "config.yaml").unlink()
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exit_:
        main(["export", *args])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err == f"sapo-lightning export: error: {message.format(tmp=tmp_path)}\n"
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize(
    "config, message",
    [("sapo", "model.policy must be a policy that can export itself (sapo_lightning.lm.policy.CausalLMPolicy); "
              "got 'MLPPolicy'"),
     ("hf_tiny", "data.task must be a text task (PromptTask) to export its policy: a token task has no tokenizer to "
                 "write")],
    ids=["no-export", "token-task"],
)
def test_a_policy_that_cannot_export_is_one_line(tmp_path, capsys, config, message):
    checkpoint = run_dir(tmp_path)
    (tmp_path / "version_0" / "config.yaml").write_text((ROOT / "configs" / f"{config}.yaml").read_text())
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--ckpt_path", str(checkpoint), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err == f"sapo-lightning export: error: {message}\n"
    assert not (tmp_path / "out").exists()

