"""LoRA through PEFT: only the adapters train, π_old and π_ref are adapter-sized, checkpoints hold no
base weights and resume exactly, export writes a merged model or the adapter, bad input is one line."""

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
import peft
import transformers
from lightning.pytorch import Trainer

from sapo_lightning import SAPO, QueryDataModule, RLModule
from sapo_lightning.callbacks import OldPolicySync
from sapo_lightning.checks import ConfigError
from sapo_lightning.commands import main
from sapo_lightning.lm.policy import CausalLMPolicy
from sapo_lightning.loop.frozen import WeightSnapshot, evaluating
from sapo_lightning.tasks import Copy

ROOT = Path(__file__).resolve().parents[1]
TASK = Copy(length=3, num_symbols=5)  # 8 task tokens of the 16-token model
LLAMA = {"model_type": "llama", "vocab_size": 16, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
         "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 32,
         "tie_word_embeddings": True, "eos_token_id": 0, "bos_token_id": None, "pad_token_id": None}
LORA = {"r": 2, "alpha": 4.0, "target_modules": ["q_proj", "v_proj"]}


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])  # LightningCLI warns about pytest's own argv


def policy(**kwargs) -> CausalLMPolicy:
    return CausalLMPolicy(TASK, model_config=LLAMA, temperature=2.0, **{"lora": LORA, **kwargs})


def numel(tensors) -> int:
    return sum(t.numel() for t in tensors)


def adapters(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def test_only_the_adapters_are_trainable():
    torch.manual_seed(0)
    lora = policy()
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}
    assert numel(p for p in lora.parameters() if p.requires_grad) == 2 * 2 * (2 * 16)  # per layer: A [2,16], B [16,2]
    # B starts at zero: the adapted model is the base model it was built from, exactly
    torch.manual_seed(0)
    plain = policy(lora=None)
    queries = TASK.sample_queries(6, torch.Generator().manual_seed(0))
    responses = plain.eval().sample(queries, torch.Generator().manual_seed(0)).responses
    with torch.no_grad():
        assert torch.equal(lora.eval().score(queries, responses).log_probs, plain.score(queries, responses).log_probs)


def fit(steps: int = 4, **kwargs) -> RLModule:
    torch.manual_seed(0)
    module = RLModule(lambda task: policy(**kwargs), SAPO(), TASK, group_size=4, beta=0.1, updates_per_rollout=2,
                      optimizer=lambda params: torch.optim.Adam(params, lr=0.01))
    Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0, callbacks=[OldPolicySync(4)]).fit(
        module, QueryDataModule(TASK, batch_size=4, seed=0))
    return module


def test_a_fit_trains_the_adapters_on_one_shared_base_model(tmp_path):
    torch.manual_seed(0)
    initial = policy()
    base = {n: p.detach().clone() for n, p in initial.named_parameters() if not p.requires_grad}
    module = fit()
    trained = module.policy
    # the base model is bit for bit the one built, the adapters moved (B away from zero)
    for name, value in trained.named_parameters():
        if name in base:
            assert torch.equal(value, base[name]), name
    moved = adapters(trained)
    assert all(not torch.equal(value, adapters(initial)[name]) for name, value in moved.items() if ".lora_B." in name)
    # π_old and π_ref are snapshots of the adapters: the module holds one base model
    assert isinstance(module.old_policy, WeightSnapshot) and isinstance(module.ref_policy, WeightSnapshot)
    extra = numel([*module.parameters(), *module.buffers()]) - numel([*trained.parameters(), *trained.buffers()])
    assert extra == 2 * numel(moved.values())
    # the reference is the base model: the adapters' initial values, B = 0, equal the adapters switched off
    queries = TASK.sample_queries(6, torch.Generator().manual_seed(1))
    with evaluating(module.ref_policy, trained) as reference:
        responses = reference.sample(queries, torch.Generator().manual_seed(0)).responses
        ref_log_probs = reference.score(queries, responses).log_probs
        with trained.model.disable_adapter():
            assert torch.equal(trained.score(queries, responses).log_probs, ref_log_probs)
    # a checkpoint holds the adapters, their Adam state and the old and reference adapters, no base weight
    trainer = module.trainer
    trainer.save_checkpoint(tmp_path / "lora.ckpt")
    state = torch.load(tmp_path / "lora.ckpt", weights_only=False)  # hparams hold the SAPO object
    policy_keys = {k for k in state["state_dict"] if k.startswith("policy.")}
    assert policy_keys == {f"policy.{n}" for n in moved}
    assert all(torch.equal(state["state_dict"][f"policy.{n}"], v) for n, v in moved.items())
    for prefix in ("old_policy.", "ref_policy."):
        assert numel(v for k, v in state["state_dict"].items() if k.startswith(prefix)) == numel(moved.values())
    (optimizer,) = state["optimizer_states"]
    assert len(optimizer["state"]) == len(moved) == len(optimizer["param_groups"][0]["params"])
    assert [tuple(s["exp_avg"].shape) for s in optimizer["state"].values()] == [tuple(v.shape) for v in moved.values()]


def test_gradient_checkpointing_reaches_the_adapters():
    torch.manual_seed(0)
    lora = policy(gradient_checkpointing=True).train()
    queries = TASK.sample_queries(4, torch.Generator().manual_seed(0))
    responses = lora.sample(queries, torch.Generator().manual_seed(0)).responses
    lora.score(queries, responses).log_probs.sum().backward()
    grads = [p.grad for n, p in lora.named_parameters() if ".lora_B." in n]  # A gets none while B = 0
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize(
    "lora, message",
    [
        ({"r": 0}, "lora.r must be an integer >= 1; got 0"),
        ({"alpha": 0}, "lora.alpha must be a finite number > 0; got 0"),
        ({"dropout": 1.0}, r"lora.dropout must be a finite number in \[0, 1\); got 1.0"),
        ({"dropout": -0.1}, r"lora.dropout must be a finite number in \[0, 1\); got -0.1"),
        ({"target_modules": []}, r"lora.target_modules must be a non-empty list of module names, or null; got \[\]"),
        ({"target_modules": ["q_proj", "query"]},
         r"lora.target_modules must be names of the model's linear, embedding or convolution layers "
         r"\(down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj\); got \['query'\]"),
        # not a layer LoRA adapts
        ({"target_modules": ["mlp"]}, r"lora.target_modules must be names of .*; got \['mlp'\]"),
        ({"rank": 4}, r"lora fields must be among r, alpha, dropout, target_modules; got \['rank'\]"),
    ],
)
def test_bad_lora_values(lora, message):
    with pytest.raises(ConfigError, match=f"^{message}$"):
        policy(lora={**LORA, **lora})


def test_without_peft_installed_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(ConfigError, match=r'^lora needs the peft package: pip install "sapo-lightning\[peft\]"$'):
        policy()


@pytest.mark.parametrize(
    "override, message",
    [
        ('{"r": 4, "target_modules": [q_proj, nope]}', "lora.target_modules must be names of the model's linear, "
         "embedding or convolution layers (down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, "
         "up_proj, v_proj); got ['nope']"),
        ('{"r": 0}', "lora.r must be an integer >= 1; got 0"),
    ],
    ids=["target", "rank"],
)
def test_bad_lora_through_the_cli_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(ROOT / "configs" / "hf_tiny.yaml"), f"--model.policy.init_args.lora={override}",
              "--trainer.default_root_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err == f"sapo-lightning: error: {message}\n"
    assert list(tmp_path.iterdir()) == []


# -- end to end through the CLI: a text run with LoRA ---------------------------------------------------------

TEXT_LLAMA = {"model_type": "llama", "vocab_size": 101, "hidden_size": 16, "intermediate_size": 32,
              "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
              "max_position_embeddings": 64, "tie_word_embeddings": True, "attention_dropout": 0.0,
              "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}


@pytest.fixture
def prompts(tmp_path) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"copy: {w}", "answer": w}) + "\n" for w in
                            ["ab", "c", "dd", "efg", "h", "ba", "cc", "gfe", "a", "hh", "bcd", "e"]))
    return path


def text_fit(root: Path, prompts: Path, max_steps: int, *extra: str) -> Path:
    """A LoRA text fit (lagged π_old, a reference KL, 2 updates per rollout); its last checkpoint."""
    policy = {"class_path": "sapo_lightning.lm.policy.CausalLMPolicy",
              "init_args": {"model_config": TEXT_LLAMA,
                            "lora": {"r": 2, "alpha": 4.0, "target_modules": ["q_proj", "v_proj"]}}}
    task = {"class_path": "sapo_lightning.text.task.PromptTask",
            "init_args": {"train_file": str(prompts), "tokenizer": str(ROOT / "assets" / "tokenizers" / "ascii"),
                          "rewards": [{"function": "sapo_lightning.text.rewards.char_match"}],
                          "max_new_tokens": 4, "max_prompt_length": 16, "val_fraction": 0.25}}
    main(["fit", "--config", str(ROOT / "configs" / "sapo.yaml"), f"--model.policy={json.dumps(policy)}",
          f"--data.task={json.dumps(task)}", "--data.batch_size=3", "--data.val_size=3", "--model.group_size=4",
          "--model.updates_per_rollout=2", "--model.beta=0.05", "--sync.every_n_steps=6",
          "--model.optimizer.init_args.lr=0.01", "--trainer.val_check_interval=4",
          "--trainer.enable_progress_bar=false",
          f"--trainer.default_root_dir={root}", f"--trainer.max_steps={max_steps}", *extra])
    (version,) = sorted((root / "lightning_logs").iterdir())[-1:]
    return version / "checkpoints" / "last.ckpt"


@pytest.mark.slow
def test_a_resumed_lora_run_equals_the_uninterrupted_one(tmp_path, prompts):
    straight = torch.load(text_fit(tmp_path / "straight", prompts, 8), weights_only=True)
    first = text_fit(tmp_path / "split", prompts, 4)
    resumed = torch.load(text_fit(tmp_path / "split", prompts, 8, f"--ckpt_path={first}"), weights_only=True)
    assert straight["global_step"] == resumed["global_step"] == 8
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    for mine, theirs in zip(straight["optimizer_states"][0]["state"].values(),
                            resumed["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(mine[key], theirs[key]) for key in ("step", "exp_avg", "exp_avg_sq"))
    # adapters, old adapters, reference adapters: no base weight in the file
    keys = straight["state_dict"].keys()
    assert all(".lora_" in k for k in keys if k.startswith("policy."))
    assert any(k.startswith("old_policy.") for k in keys) and any(k.startswith("ref_policy.") for k in keys)
    assert not any("embed_tokens" in k or "lm_head" in k or "mlp" in k for k in keys)


@pytest.mark.slow
def test_resuming_on_another_random_base_is_refused_in_one_line(tmp_path, prompts, capsys):
    """A model_config base is rebuilt from the seed: adapters resumed on another one would train on the wrong model."""
    first = text_fit(tmp_path / "run", prompts, 4)
    with pytest.raises(SystemExit) as exit_:
        text_fit(tmp_path / "run", prompts, 8, f"--ckpt_path={first}", "--seed_everything=1")
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sapo-lightning: error: the frozen base weights must be those the checkpoint's "
                              "adapters were trained on"), err[-1]


@pytest.mark.slow
def test_export_merged_and_adapter_reproduce_the_policys_logits(tmp_path, prompts, monkeypatch, capsys):
    from sapo_lightning.export import build_module

    checkpoint = text_fit(tmp_path / "run", prompts, 4)
    # the trained policy, as export rebuilds it
    module = build_module(checkpoint.parent.parent / "config.yaml")
    state = torch.load(checkpoint, weights_only=True)
    module.on_load_checkpoint(state)
    module.load_state_dict(state["state_dict"])
    trained = module.policy.eval()
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in trained.named_parameters() if ".lora_B." in n)
    ids = torch.tensor([[2, 40, 50, 60, 70, 80, 3, 4]])
    with torch.no_grad():
        expected = trained.model(ids).logits

    main(["export", "--ckpt_path", str(checkpoint), "--output", str(tmp_path / "merged")])
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert type(merged).__name__ == "LlamaForCausalLM" and not (tmp_path / "merged" / "adapter_config.json").exists()
    main(["export", "--ckpt_path", str(checkpoint), "--output", str(tmp_path / "adapter"), "--lora", "adapter"])
    written = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert {"adapter_config.json", "adapter_model.safetensors", "base", "tokenizer.json"} <= set(written)
    assert not (tmp_path / "adapter" / "model.safetensors").exists()  # the adapter only beside its base
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "adapter" / "base")
    adapted = peft.PeftModel.from_pretrained(base, tmp_path / "adapter")
    auto = peft.AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter")  # finds its base by itself
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, expected, rtol=1e-5, atol=1e-5)  # merging rounds
        assert torch.equal(adapted(ids).logits, expected)
        assert torch.equal(auto(ids).logits, expected)


def test_adapter_export_of_a_policy_without_lora_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # text_tiny's data paths are relative to the repository root
    version = tmp_path / "version_0"
    (version / "checkpoints").mkdir(parents=True)
    (version / "checkpoints" / "last.ckpt").write_bytes(b"")
    (version / "config.yaml").write_text((ROOT / "configs" / "text_tiny.yaml").read_text())
    with pytest.raises(SystemExit) as exit_:
        main(["export", "--ckpt_path", str(version / "checkpoints" / "last.ckpt"), "--output", str(tmp_path / "out"),
              "--lora", "adapter"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err == ("sapo-lightning export: error: lora must be merged for a policy without "
                                             "LoRA adapters (model.policy.init_args.lora is null); got 'adapter'\n")
    assert not (tmp_path / "out").exists()


def test_an_adapter_export_names_the_saved_base_it_was_trained_on(tmp_path, prompts):
    from sapo_lightning.lm.policy import CausalLMPolicy
    from sapo_lightning.text.task import PromptTask

    torch.manual_seed(0)
    fields = {k: v for k, v in TEXT_LLAMA.items() if k != "model_type"}
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**fields)).save_pretrained(tmp_path / "base")
    task = PromptTask(str(prompts), str(ROOT / "assets" / "tokenizers" / "ascii"),
                      [{"function": "sapo_lightning.text.rewards.char_match"}], max_new_tokens=4)
    lora = CausalLMPolicy(task, path=str(tmp_path / "base"), lora=LORA).eval()
    with torch.no_grad():
        for name, param in lora.named_parameters():
            if ".lora_B." in name:
                param.normal_()  # a trained adapter
    lora.export(str(tmp_path / "out"), lora="adapter")
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tmp_path / "base")  # not written again
    assert not (tmp_path / "out" / "base").exists() and not (tmp_path / "out" / "model.safetensors").exists()
    loaded = peft.AutoPeftModelForCausalLM.from_pretrained(tmp_path / "out")
    ids = torch.tensor([[2, 40, 50, 60, 70]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, lora.model(ids).logits)
    # the policy is untouched by a merged export
    before = {k: v.clone() for k, v in lora.state_dict().items()}
    lora.export(str(tmp_path / "merged"))
    assert all(torch.equal(v, before[k]) for k, v in lora.state_dict().items())
