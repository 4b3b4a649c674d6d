"""The ``sapo-lightning`` command: LightningCLI over :class:`RLModule` and :class:`QueryDataModule`."""

from __future__ import annotations

import logging
import sys
import warnings

from jsonargparse import ArgumentError
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from sapo_lightning.callbacks import OldPolicySync
from sapo_lightning.data import QueryDataModule
from sapo_lightning.errors import ConfigError
from sapo_lightning.module import RLModule


class SAPOCLI(LightningCLI):
    """LightningCLI with the task shared between data and model, and the old-policy sync."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.task", "model.task", apply_on="instantiate")
        parser.add_lightning_class_args(OldPolicySync, "sync")


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
