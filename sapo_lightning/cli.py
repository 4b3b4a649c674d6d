"""The ``sapo-lightning`` command: LightningCLI over :class:`RLModule` and :class:`QueryDataModule`."""

from __future__ import annotations

import logging
import sys
import warnings
from typing import Any

from jsonargparse import ArgumentError
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from sapo_lightning.callbacks import OldPolicySync
from sapo_lightning.checkpointing import RunCheckpoint
from sapo_lightning.data import QueryDataModule
from sapo_lightning.checks import ConfigError
from sapo_lightning.module import RLModule

#: What every run gets unless the config says otherwise: see :class:`RunCheckpoint`.
CHECKPOINT_DEFAULTS = {
    "checkpoint.filename": "{step}",
    "checkpoint.save_last": True,
    "checkpoint.every_n_train_steps": 50,
    "trainer.plugins": {"class_path": "sapo_lightning.checkpointing.AtomicCheckpointIO"},
}


class SAPOCLI(LightningCLI):
    """LightningCLI with the task shared between data and model, the old-policy sync, and checkpoints.

    Every run saves ``step=N.ckpt`` and ``last.ckpt`` in its own version directory, every
    ``checkpoint.every_n_train_steps`` steps and when it ends, through a writer that is
    atomic under ``kill -9``; ``fit --ckpt_path last`` resumes from the newest complete one,
    loading with ``weights_only=True``.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.task", "model.task", apply_on="instantiate")
        parser.add_lightning_class_args(OldPolicySync, "sync")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(CHECKPOINT_DEFAULTS)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer = self._get(self.config_init, "trainer", default={})
        if trainer.get("enable_checkpointing") is False:  # an explicit opt-out drops the default checkpoint
            parser = self._parser(self.subcommand)
            parser.callback_keys = [key for key in parser.callback_keys if key != "checkpoint"]
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        updates, max_steps = self.model.updates_per_rollout, self.trainer.max_steps
        if max_steps > 0 and max_steps % updates:
            raise ConfigError(
                f"trainer.max_steps must be a multiple of model.updates_per_rollout={updates} "
                f"(a rollout batch makes {updates} optimizer steps); got {max_steps}"
            )
        config = self.config_init[self.subcommand]
        if config.get("weights_only") is None:
            config["weights_only"] = True  # a checkpoint holds tensors and plain types only


def main(args: list[str] | None = None) -> None:
    """Entry point of ``sapo-lightning`` and ``python -m sapo_lightning``.

    Bad input ends with one line on stderr naming the option and its allowed range, and
    exit status 2, before any file is written. ``sapo-lightning compare ...`` runs a study
    (:mod:`sapo_lightning.compare`) instead of LightningCLI.
    """
    argv = sys.argv[1:] if args is None else args
    if argv[:1] == ["compare"]:
        from sapo_lightning.compare import main as compare

        return compare(argv[1:])
    # "Seed set to N" would stand before an error line; the seed is in the run's config.yaml.
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    # old_policy is kept in eval mode on purpose (it only samples); Lightning warns about any such module.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    try:
        SAPOCLI(
            RLModule,
            QueryDataModule,
            args=args,
            parser_kwargs={"exit_on_error": False},
            save_config_kwargs={"overwrite": False},
        )
    except (ConfigError, ArgumentError) as err:
        message = " ".join(str(err).split())
        print(f"sapo-lightning: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
