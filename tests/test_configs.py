"""Every shipped config and overlay: it resolves to what it says, and it trains through the command line."""

from __future__ import annotations

import importlib.util
import inspect
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sapo_lightning import objectives
from sapo_lightning.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASES = ["sapo", "transformer", "hf_tiny", "text_tiny", "env_tiny"]  # full configs, each runs alone
OBJECTIVES = ["grpo", "dapo", "dr_grpo", "gspo", "cispo"]  # configs/objectives/<name>.yaml
DDP = CONFIGS / "ddp.yaml"  # an overlay beside the full configs
LORA = CONFIGS / "lora.yaml"  # an overlay for the Hugging Face configs: LoRA adapters instead of every weight
LORA_BASES = ["hf_tiny", "text_tiny"]
FSDP = CONFIGS / "fsdp.yaml"  # an overlay for the HF configs; its 2-process run is tests/test_fsdp.py
BF16 = CONFIGS / "bf16.yaml"  # an overlay for any HF config (the real model's included): bf16-mixed precision
RECIPE = CONFIGS / "text_gsm8k.yaml"  # a real model on a GPU: parsed, and built with a tiny stand-in
# the real model on a CPU: trained 2 steps in tests/test_smollm2.py, and with a tiny GGUF stand-in in test_pretrained.py
SMOLLM2 = CONFIGS / "smollm2_arithmetic.yaml"
# a reasoning-gym dataset on the real model: parsed here, trained 2 steps with a tiny stand-in in
# tests/test_reasoning_gym.py
REASONING_GYM = CONFIGS / "smollm2_reasoning_gym.yaml"
# episodes of several turns on the real model: parsed here; its task's episodes on the real model in
# tests/test_smollm2.py
RETRY = CONFIGS / "smollm2_retry.yaml"
HF = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="hf_tiny needs the [hf] extra")
PEFT = pytest.mark.skipif(importlib.util.find_spec("peft") is None, reason="lora needs the [peft] extra")


def marks(base: str, name: str | None = None) -> list:
    return ([HF] if base in ("hf_tiny", "text_tiny", "env_tiny") else []) + ([PEFT] if name == "lora" else [])


def case(base: str, name: str | None = None):
    """One (base, objective overlay) pair as a test parameter."""
    return pytest.param(base, name, id=f"{base}+{name}" if name else base, marks=marks(base, name))


# (base, objective overlay) pairs that are run; every pair is resolved
RUNS = ([case(base) for base in BASES] + [case("sapo", name) for name in OBJECTIVES]
        + [case("transformer", "grpo"), case("hf_tiny", "cispo")])
RUNS += [case(base, "lora") for base in LORA_BASES] + [case("hf_tiny", "bf16")]
# a few quick steps: validate and save at step 2, small validation and batch for the token tasks
QUICK = ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1",
         "--trainer.enable_progress_bar=false", "--data.val_size=16"]
SMALL_BATCH = {"transformer": ["--data.batch_size=4"], "hf_tiny": ["--data.batch_size=4"],
               "text_tiny": ["--data.batch_size=4"], "env_tiny": ["--data.batch_size=2", "--model.group_size=2"]}


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI warns when pytest's own argv sits beside the args it is given; the text configs'
    data paths are relative to the repository root, where the README runs them."""
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])
    monkeypatch.chdir(CONFIGS.parent)


def config_args(base: str, *overlays: Path) -> list[str]:
    args = ["--config", str(CONFIGS / f"{base}.yaml")]
    for overlay in overlays:
        args += ["--config", str(overlay)]
    return args


def overlay(name: str) -> Path:
    return {"lora": LORA, "bf16": BF16}.get(name, CONFIGS / "objectives" / f"{name}.yaml")


def resolve(capsys, args: list[str]) -> dict:
    """The full config ``fit --print_config`` prints for these arguments."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(["fit", *args, "--print_config"])
    assert exit_.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def without(config: dict, dotted: list[str]) -> dict:
    """``config`` with the given dotted keys removed."""
    config = yaml.safe_load(yaml.safe_dump(config))
    for key in dotted:
        *parents, last = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node.pop(last)
    return config


def dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    """The keys an overlay sets, down to the first class_path node (replaced as a whole)."""
    keys = []
    for key, value in tree.items():
        if isinstance(value, dict) and "class_path" not in value:
            keys += dotted_keys(value, f"{prefix}{key}.")
        else:
            keys.append(f"{prefix}{key}")
    return keys


def test_the_tests_cover_every_shipped_config():
    shipped = {p.relative_to(CONFIGS).as_posix() for p in CONFIGS.rglob("*.yaml") if p.parent.name != "studies"}
    covered = {f"{b}.yaml" for b in BASES} | {f"objectives/{o}.yaml" for o in OBJECTIVES} | {"ddp.yaml", RECIPE.name}
    covered |= {LORA.name, FSDP.name, BF16.name, SMOLLM2.name, REASONING_GYM.name, RETRY.name}
    assert shipped == covered


def test_configuration_doc_lists_every_config_with_its_kind():
    # docs/configuration.md's table: | `configs/FILE` | full, overlay (...) or study | what it sets |
    doc = (CONFIGS.parent / "docs" / "configuration.md").read_text()
    listed = {}
    for path, kind in re.findall(r"^\| `configs/([^`]+)` \| (full|overlay|study)\b", doc, re.MULTILINE):
        for name in OBJECTIVES if "<name>" in path else [path]:
            listed[path.replace("<name>", name)] = kind
    assert listed.pop("studies/*.yaml") == "study"
    (studies_row,) = re.findall(r"^\| `configs/studies/\*\.yaml` .*$", doc, re.MULTILINE)
    for study in (CONFIGS / "studies").glob("*.yaml"):
        assert f"`{study.stem}`" in studies_row, study.name
    full = {f"{b}.yaml" for b in BASES} | {RECIPE.name, SMOLLM2.name, REASONING_GYM.name, RETRY.name}
    overlays = {f"objectives/{o}.yaml" for o in OBJECTIVES} | {DDP.name, LORA.name, FSDP.name, BF16.name}
    assert listed == {name: "full" for name in full} | {name: "overlay" for name in overlays}


@pytest.mark.parametrize(("base", "name"), [case(base, name) for base in BASES for name in OBJECTIVES])
def test_objective_overlay_resolves_to_exactly_its_objective(capsys, base, name):
    spec = yaml.safe_load(overlay(name).read_text())
    resolved = resolve(capsys, config_args(base, overlay(name)))
    expected = spec["model"]["objective"]
    # the base's SAPO arguments are not carried over, and the overlay states every argument
    cls = getattr(objectives, expected["class_path"].rsplit(".", 1)[1])
    assert set(expected["init_args"]) == set(inspect.signature(cls).parameters)
    assert resolved["model"]["objective"] == expected
    # nothing but what the overlay names differs from the base alone
    keys = dotted_keys(spec)
    assert without(resolved, keys) == without(resolve(capsys, config_args(base)), keys)


def test_dr_grpo_overlay_unscales_the_advantages(capsys):
    assert resolve(capsys, config_args("sapo", overlay("dr_grpo")))["model"]["advantage_scale"] == "none"
    assert resolve(capsys, config_args("sapo"))["model"]["advantage_scale"] == "group"


@pytest.mark.parametrize("base", [pytest.param(base, marks=marks(base)) for base in BASES])
def test_base_config_resolves_to_sapo(capsys, base):
    objective = resolve(capsys, config_args(base))["model"]["objective"]
    assert objective["class_path"] == "sapo_lightning.objectives.SAPO"
    assert (objective["init_args"]["tau_pos"], objective["init_args"]["tau_neg"]) == (1.0, 1.05)


def test_ddp_overlay_sets_only_the_processes(capsys):
    resolved = resolve(capsys, config_args("sapo", DDP))
    assert ((resolved["trainer"]["devices"], resolved["trainer"]["strategy"], resolved["trainer"]["num_nodes"])
            == (2, "ddp", 1))
    keys = dotted_keys(yaml.safe_load(DDP.read_text()))
    assert without(resolved, keys) == without(resolve(capsys, config_args("sapo")), keys)


@pytest.mark.parametrize("base", [pytest.param(base, marks=marks(base)) for base in LORA_BASES])
def test_lora_overlay_sets_only_the_adapters_and_the_learning_rate(capsys, base):
    resolved = resolve(capsys, config_args(base, LORA))
    assert (resolved["model"]["policy"]["init_args"]["lora"]
            == yaml.safe_load(LORA.read_text())["model"]["policy"]["init_args"]["lora"])
    keys = ["model.policy.init_args.lora", "model.optimizer.init_args.lr"]
    assert without(resolved, keys) == without(resolve(capsys, config_args(base)), keys)


@HF
@pytest.mark.parametrize("base", ["hf_tiny", "text_tiny"])
def test_fsdp_overlay_sets_only_the_strategy_and_equal_forward_passes(capsys, base):
    """Resolved here; run (2 CPU processes, FSDP2 over gloo) by tests/test_fsdp.py, slow, in a subprocess."""
    resolved = resolve(capsys, config_args(base, FSDP))
    strategy = resolved["trainer"]["strategy"]
    assert strategy["class_path"] == "lightning.pytorch.strategies.ModelParallelStrategy"
    assert strategy["init_args"]["data_parallel_size"] == resolved["trainer"]["devices"] == 2
    assert strategy["init_args"]["tensor_parallel_size"] == 1
    assert resolved["model"]["policy"]["init_args"]["stop_when_done"] is False
    keys = dotted_keys(yaml.safe_load(FSDP.read_text()))
    assert without(resolved, keys) == without(resolve(capsys, config_args(base)), keys)


@pytest.mark.parametrize("args", [pytest.param(config_args(base), marks=HF, id=base)
                                  for base in ("hf_tiny", "text_tiny")]
                         + [pytest.param(["--config", str(SMOLLM2)], id="smollm2_arithmetic")])
def test_bf16_overlay_sets_only_the_precision_and_the_attention_kernel(capsys, args):
    """Parsed only here (the real model is not loaded); hf_tiny runs it below, tests/test_mismatch.py its effects."""
    resolved = resolve(capsys, [*args, "--config", str(BF16)])
    assert resolved["trainer"]["precision"] == "bf16-mixed"
    assert resolved["model"]["policy"]["init_args"]["dtype"] == "float32"  # float32 master weights
    assert resolved["model"]["policy"]["init_args"]["attention"] == "grouped"
    keys = ["trainer.precision", "model.policy.init_args.attention"]
    assert without(resolved, keys) == without(resolve(capsys, args), keys)


def scalars(run: Path) -> dict[str, list[float]]:
    (events,) = run.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.mark.slow
@pytest.mark.parametrize(("base", "name"), RUNS)
def test_config_trains_a_few_steps(tmp_path, base, name):
    overlays = [overlay(name)] if name else []
    args = ["fit", *config_args(base, *overlays), *QUICK, *SMALL_BATCH.get(base, []),
            "--trainer.default_root_dir", str(tmp_path)]
    main(args)
    run = tmp_path / "lightning_logs" / "version_0"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2
    # the run used the overlay's objective: its saved config, and the diagnostics only it logs
    saved_model = yaml.safe_load((run / "config.yaml").read_text())["model"]
    saved = saved_model["objective"]
    if name == "lora":  # the adapters trained, and only they were saved
        assert saved_model["policy"]["init_args"]["lora"]["r"] == 8
        assert all(".lora_" in key for key in state["state_dict"] if key.startswith("policy."))
        name = None  # the base's objective
    if name == "bf16":  # the base's objective, in bf16-mixed
        assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["precision"] == "bf16-mixed"
        name = None
    if name:
        assert saved == yaml.safe_load(overlay(name).read_text())["model"]["objective"]
    else:
        assert saved["class_path"] == "sapo_lightning.objectives.SAPO"
    logged = scalars(run)
    objective_tag = {None: "train/gate_mean", "gspo": "train/seq_ratio_mean"}.get(name, "train/clip_frac_high")
    for tag in ("train/reward", "train/loss", objective_tag, "val/reward", "val/exact_match"):
        assert tag in logged and all(torch.isfinite(torch.tensor(logged[tag]))), tag
    assert len(logged["train/reward"]) == 2


def test_text_recipe_parses(capsys):
    resolved = resolve(capsys, ["--config", str(RECIPE)])
    assert resolved["trainer"]["precision"] == "bf16-mixed"
    assert resolved["model"]["policy"]["class_path"] == "sapo_lightning.lm.policy.CausalLMPolicy"
    task = resolved["data"]["task"]["init_args"]
    assert [r["function"].rsplit(".", 1)[1] for r in task["rewards"]] == ["numeric_answer", "regex_format"]


def test_reasoning_gym_recipe_parses_with_the_arithmetic_recipes_hyperparameters(capsys):
    resolved = resolve(capsys, ["--config", str(REASONING_GYM)])
    task = resolved["data"]["task"]
    assert task["class_path"] == "sapo_lightning.envs.reasoning_gym.ReasoningGymTask"
    # the dataset's defaults: switch it alone
    assert task["init_args"]["dataset"] and task["init_args"]["config"] is None  # dataset_configs: per dataset
    arithmetic = resolve(capsys, ["--config", str(SMOLLM2)])
    for key in ("model", "sync", "checkpoint", "seed_everything"):
        assert resolved[key] == arithmetic[key], key
    assert resolved["trainer"]["max_steps"] == 2 * arithmetic["trainer"]["max_steps"]  # learns at half the rate
    assert {k: v for k, v in resolved["trainer"].items() if k != "max_steps"} == {
        k: v for k, v in arithmetic["trainer"].items() if k != "max_steps"}
    assert {k: v for k, v in resolved["data"].items() if k != "task"} == {
        k: v for k, v in arithmetic["data"].items() if k != "task"}


def test_retry_recipe_is_an_env_task_with_the_arithmetic_recipes_model_and_optimizer(capsys):
    resolved = resolve(capsys, ["--config", str(RETRY)])
    task = resolved["data"]["task"]
    assert task["class_path"] == "sapo_lightning.envs.EnvTask" and task["init_args"]["max_turns"] >= 2
    assert task["init_args"]["env"]["class_path"] == "sapo_lightning.envs.examples.Retry"
    arithmetic = resolve(capsys, ["--config", str(SMOLLM2)])
    for key in ("policy", "objective", "optimizer", "group_size", "max_grad_norm"):
        assert resolved["model"][key] == arithmetic["model"][key], key


@pytest.mark.slow
@HF
def test_text_recipe_trains_with_a_tiny_stand_in_model(tmp_path):
    pandas = pytest.importorskip("pandas")
    rows = [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
            for a in range(6) for b in range(4)]
    pandas.DataFrame(rows).to_parquet(tmp_path / "gsm8k.parquet")
    tiny = ('{"model_type": "llama", "vocab_size": 101, "hidden_size": 16, "intermediate_size": 32, '
            '"num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2, '
            '"max_position_embeddings": 128, "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}')
    main(["fit", "--config", str(RECIPE), "--trainer.accelerator=cpu", "--trainer.max_steps=2",
          "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1",
          "--trainer.enable_progress_bar=false", "--trainer.default_root_dir", str(tmp_path),
          "--model.policy.init_args.path=null", f"--model.policy.init_args.model_config={tiny}",
          "--model.policy.init_args.gradient_checkpointing=false", "--model.policy.init_args.dtype=float32",
          f"--data.task.init_args.train_file={tmp_path / 'gsm8k.parquet'}",
          f"--data.task.init_args.val_file={tmp_path / 'gsm8k.parquet'}",
          f"--data.task.init_args.tokenizer={CONFIGS.parent / 'assets' / 'tokenizers' / 'ascii'}",
          "--data.task.init_args.max_new_tokens=8", "--data.batch_size=2", "--data.val_size=4",
          "--data.val_batch_size=2", "--model.group_size=2"])
    run = tmp_path / "lightning_logs" / "version_0"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    logged = scalars(run)
    for tag in ("train/rewards/numeric_answer", "train/rewards/regex_format", "val/accuracy/numeric_answer"):
        assert tag in logged, tag
