"""``sapo-lightning export``: a trained policy as a ``transformers`` model and tokenizer directory."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import ArgumentError, ArgumentParser

from sapo_lightning.checks import ConfigError, fail, missing_path
from sapo_lightning.files import apply_umask

DESCRIPTION = "write the trained policy as a transformers model and tokenizer"
#: keys of a fit's config.yaml that belong to the fit subcommand, not to the model or data
RUN_ONLY_KEYS = ("ckpt_path", "weights_only")
#: the Trainer is built but never runs: one CPU process, whatever machines the run trained on
EXPORT_TRAINER = {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto", "logger": False}


def export(
    ckpt_path: str, output: str, config: str | None = None, lora: Literal["merged", "adapter"] = "merged"
) -> None:
    """Load a checkpoint into the run's model and write its policy with ``save_pretrained``.

    Args:
        ckpt_path: Checkpoint of a run (``<version_dir>/checkpoints/X.ckpt``).
        output: Directory to write, new or empty; ``AutoModelForCausalLM.from_pretrained`` and
            ``AutoTokenizer.from_pretrained`` load it.
        config: The run's config; null: ``<version_dir>/config.yaml``, beside ``checkpoints/``.
        lora: For a LoRA policy: ``merged`` writes the base model with the adapters merged in,
            a plain ``transformers`` model; ``adapter`` writes the PEFT adapter only, which
            ``peft.PeftModel.from_pretrained(base, output)`` loads onto the base model (the
            policy's ``path``; a ``model_config`` base is written to ``output/base``).
    """
    checkpoint = Path(ckpt_path)
    if not checkpoint.is_file():
        missing_path("ckpt_path", ckpt_path)
    config_path = Path(config) if config is not None else checkpoint.parent.parent / "config.yaml"
    if not config_path.is_file():
        fail("config", "the run's config.yaml (by default the one in the checkpoint's version directory)",
             str(config_path))
    target = Path(output)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        fail("output", "a new or empty directory", output)
    module = build_module(config_path)
    if not callable(getattr(module.policy, "check_export", None)):
        fail("model.policy", "a policy that can export itself (sapo_lightning.lm.policy.CausalLMPolicy)",
             type(module.policy).__name__)
    module.policy.check_export(lora)  # before the checkpoint is read
    import torch  # here, not at the top: bad arguments are refused without its 1-2 s import

    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    module.on_load_checkpoint(state)  # the run's frozen weights and copies, as fit restores them
    module.load_state_dict(state["state_dict"])
    module.policy.export(str(target), lora=lora)
    apply_umask(target)
    print(f"wrote {target}")


def build_module(config_path: Path) -> Any:  # an RLModule, unnamed: parsing reads this module's annotations
    """The run's RLModule, built through LightningCLI from its config without running anything."""
    from sapo_lightning.cli import SAPOCLI  # imports Lightning: only once the arguments are checked
    from sapo_lightning.data import QueryDataModule
    from sapo_lightning.module import RLModule

    values = yaml.safe_load(config_path.read_text())
    if not isinstance(values, dict):
        fail("config", "a run's config.yaml (a mapping)", str(config_path))
    for key in RUN_ONLY_KEYS:
        values.pop(key, None)
    values["trainer"] = {**(values.get("trainer") or {}), **EXPORT_TRAINER}
    cli = SAPOCLI(RLModule, QueryDataModule, args=values, run=False, parser_kwargs={"exit_on_error": False})
    return cli.model


def parser() -> ArgumentParser:
    parser = ArgumentParser(prog="sapo-lightning export", description=DESCRIPTION[0].upper() + DESCRIPTION[1:] + ".",
                            exit_on_error=False)
    parser.add_function_arguments(export, as_group=False)
    return parser


def main(args: list[str] | None = None) -> None:
    """Entry point of ``sapo-lightning export``; bad input -> one line on stderr, exit 2, nothing written."""
    # the seed and the Trainer's device lines describe the run, not the export
    for name in ("lightning.fabric.utilities.seed", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # the config is passed as args on purpose, while sys.argv holds export's own options
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    try:
        export(**vars(parser().parse_args(args)))
    except (ConfigError, ArgumentError, yaml.YAMLError) as err:
        message = " ".join(str(err).split())
        print(f"sapo-lightning export: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
