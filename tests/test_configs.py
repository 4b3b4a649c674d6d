"""Every shipped config and overlay: it resolves to what it says, and it trains through the command line."""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from sapo_lightning import objectives
from sapo_lightning.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
BASES = ["sapo", "transformer", "hf_tiny"]  # full configs, each runs alone
OBJECTIVES = ["grpo", "dapo", "dr_grpo", "gspo", "cispo"]  # configs/objectives/<name>.yaml
DDP = CONFIGS / "ddp.yaml"  # an overlay beside the full configs
HF = pytest.mark.skipif(importlib.util.find_spec("transformers") is None, reason="hf_tiny needs the [hf] extra")


def marks(base: str) -> list:
    return [HF] if base == "hf_tiny" else []


def case(base: str, name: str | None = None):
    """One (base, objective overlay) pair as a test parameter."""
    return pytest.param(base, name, id=f"{base}+{name}" if name else base, marks=marks(base))


# (base, objective overlay) pairs that are run; every pair is resolved
RUNS = [case(base) for base in BASES] + [case("sapo", name) for name in OBJECTIVES] + [case("transformer", "grpo"), case("hf_tiny", "cispo")]
# a few quick steps: validate and save at step 2, small validation and batch for the token tasks
QUICK = ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.log_every_n_steps=1",
         "--trainer.enable_progress_bar=false", "--data.val_size=16"]
SMALL_BATCH = {"transformer": ["--data.batch_size=4"], "hf_tiny": ["--data.batch_size=4"]}


@pytest.fixture(autouse=True)
def plain_argv(monkeypatch):
    """LightningCLI warns when pytest's own argv sits beside the args it is given."""
    monkeypatch.setattr(sys, "argv", ["sapo-lightning"])


def config_args(base: str, *overlays: Path) -> list[str]:
    args = ["--config", str(CONFIGS / f"{base}.yaml")]
    for overlay in overlays:
        args += ["--config", str(overlay)]
    return args


def overlay(name: str) -> Path:
    return CONFIGS / "objectives" / f"{name}.yaml"


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
    covered = {f"{b}.yaml" for b in BASES} | {f"objectives/{o}.yaml" for o in OBJECTIVES} | {"ddp.yaml"}
    assert shipped == covered


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
    assert (resolved["trainer"]["devices"], resolved["trainer"]["strategy"], resolved["trainer"]["num_nodes"]) == (2, "ddp", 1)
    keys = dotted_keys(yaml.safe_load(DDP.read_text()))
    assert without(resolved, keys) == without(resolve(capsys, config_args("sapo")), keys)


def scalars(run: Path) -> dict[str, list[float]]:
    (events,) = run.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    return {tag: [e.value for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


@pytest.mark.slow
@pytest.mark.parametrize(("base", "name"), RUNS)
def test_config_trains_a_few_steps(tmp_path, base, name):
    overlays = [overlay(name)] if name else []
    args = ["fit", *config_args(base, *overlays), *QUICK, *SMALL_BATCH.get(base, []), "--trainer.default_root_dir", str(tmp_path)]
    main(args)
    run = tmp_path / "lightning_logs" / "version_0"
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 2
    # the run used the overlay's objective: its saved config, and the diagnostics only it logs
    saved = yaml.safe_load((run / "config.yaml").read_text())["model"]["objective"]
    if name:
        assert saved == yaml.safe_load(overlay(name).read_text())["model"]["objective"]
    else:
        assert saved["class_path"] == "sapo_lightning.objectives.SAPO"
    logged = scalars(run)
    objective_tag = {None: "train/gate_mean", "gspo": "train/seq_ratio_mean"}.get(name, "train/clip_frac_high")
    for tag in ("train/reward", "train/loss", objective_tag, "val/reward", "val/exact_match"):
        assert tag in logged and all(torch.isfinite(torch.tensor(logged[tag]))), tag
    assert len(logged["train/reward"]) == 2
