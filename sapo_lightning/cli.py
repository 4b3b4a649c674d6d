"""``sapo-lightning fit|validate|test``: LightningCLI over :class:`RLModule` and :class:`QueryDataModule`."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import torch
import yaml
from jsonargparse import ArgumentError
from jsonargparse.typing import PositiveInt
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar as AnyProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn

from sapo_lightning.callbacks import OldPolicySync, ProgressBar
from sapo_lightning.checks import ConfigError, RunFailed, missing_path
from sapo_lightning.data import QueryDataModule
from sapo_lightning.loop.checkpointing import RunCheckpoint, find_last
from sapo_lightning.loop.guard import NonFiniteTraining
from sapo_lightning.loop.process_group import end_process_group
from sapo_lightning.loop.threads import SMALL_MODEL, set_threads
from sapo_lightning.module import RLModule


#: trainer.precision's values, as the one-line error lists them (Lightning's own spellings)
def _literals(annotation: Any) -> list:
    """The values of every ``Literal`` inside a type annotation (unions and optionals unpacked)."""
    if get_origin(annotation) is Literal:
        return list(get_args(annotation))
    return [value for arg in get_args(annotation) for value in _literals(arg)]


PRECISIONS = ", ".join(dict.fromkeys(str(v) for v in _literals(get_type_hints(Trainer.__init__)["precision"])))
#: float16 autocast with a gradient scaler: CUDA only here (Lightning would run it on a CPU, unchecked)
GPU_ONLY_PRECISIONS = {"16-mixed", "16", 16}
#: options typed as a union, and what their one-line error says is allowed
UNION_OPTIONS = {"trainer.precision": f"one of {PRECISIONS}", "threads": "a positive integer or auto"}

#: What every run gets unless the config says otherwise: see :class:`RunCheckpoint`. Every 500 steps
#: (as Hugging Face's Trainer): each save is an fsync'ed file, ~10 ms on a VM disk, which every
#: 50 steps cost the seed run ~0.4 ms a step (docs/benchmarks.md); a run of slow steps can ask for more.
#: ``last.ckpt`` is a symlink to the newest ``step=N.ckpt``, not a second copy (1.6 GB for SmolLM2).
CHECKPOINT_DEFAULTS = {
    "checkpoint.filename": "{step}",
    "checkpoint.save_last": "link",
    "checkpoint.every_n_train_steps": 500,
    "trainer.plugins": {"class_path": "sapo_lightning.loop.checkpointing.AtomicCheckpointIO"},
}


class SAPOCLI(LightningCLI):
    """LightningCLI with the task shared between data and model, the old-policy sync, and checkpoints.

    Every run saves ``step=N.ckpt`` (and links ``last.ckpt`` to it) in its own version directory, every
    ``checkpoint.every_n_train_steps`` steps and when it ends, through a writer that is
    atomic under ``kill -9``; ``fit --ckpt_path last`` resumes from the newest checkpoint of
    any run under the same root (:func:`find_last`), loading with ``weights_only=True``. Unless the config names a
    progress bar (or turns it off), the bar is :class:`ProgressBar`, redrawn twice a second.
    """

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {name: args for name, args in LightningCLI.subcommands().items() if name != "predict"}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.task", "model.task", apply_on="instantiate")
        parser.add_lightning_class_args(OldPolicySync, "sync")
        # a class group, not a callback key: the Trainer gets it unless checkpointing is switched off
        parser.add_class_arguments(RunCheckpoint, "checkpoint", fail_untyped=False, sub_configs=True)
        parser.set_defaults(CHECKPOINT_DEFAULTS)
        parser.add_argument(
            "--threads", type=PositiveInt | Literal["auto"], default="auto",
            help=f"torch's intra-op threads: a positive integer, or auto: one for a model under {SMALL_MODEL:,} "
            "parameters (the demos), torch's default otherwise or when OMP_NUM_THREADS is set "
            "(docs/benchmarks.md#threads)",
        )

    def before_instantiate_classes(self) -> None:
        trainer = (self.config[self.subcommand] if self.subcommand else self.config).trainer
        check_precision(trainer.precision, trainer.accelerator)

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        config = self.config[self.subcommand] if self.subcommand else self.config
        set_threads(config.threads, self.model)  # before any step; the count depends on the model built

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        callbacks = config.trainer.callbacks or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        if config.trainer.enable_checkpointing is not False:
            callbacks.append(config.checkpoint)
        if (config.trainer.enable_progress_bar is not False
                and not any(isinstance(c, AnyProgressBar) for c in callbacks)):
            callbacks.append(ProgressBar())  # redrawn twice a second, not after every batch
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        self.model.check_trainer(self.trainer, self.datamodule)  # before the run writes anything
        config = self.config_init[self.subcommand]
        if config.get("weights_only") is None:
            config["weights_only"] = True  # a checkpoint holds tensors and plain types only
        if config.get("ckpt_path") == "last":  # of any run under this root, not only the new run's own
            logger = self.trainer.logger
            root = Path(logger.save_dir, logger.name) if logger else Path(self.trainer.default_root_dir)
            config["ckpt_path"] = find_last(root)
            if config["ckpt_path"] is None:
                rank_zero_warn(f"--ckpt_path last: no checkpoint under {root}; starting a new run")
        elif config.get("ckpt_path") is not None and not Path(config["ckpt_path"]).exists():  # sharded: a directory
            missing_path("ckpt_path", config["ckpt_path"])


def check_precision(precision: Any, accelerator: Any) -> None:
    """Refuse float16 mixed precision off a GPU: its autocast and gradient scaler are for CUDA."""
    on_cpu = accelerator == "cpu" or (accelerator in (None, "auto") and not torch.cuda.is_available())
    if precision in GPU_ONLY_PRECISIONS and on_cpu:
        raise ConfigError(f"trainer.precision must be 32-true, bf16-mixed or bf16-true on a CPU (16-mixed needs "
                          f"--trainer.accelerator=gpu); got {precision} with trainer.accelerator={accelerator}")


def _union_error(err: ArgumentError) -> ConfigError | ArgumentError:
    """jsonargparse's page of union subtypes for a bad trainer.precision or threads, as one short line."""
    message = str(err)
    for key, requirement in UNION_OPTIONS.items():
        if f'key "{key}"' in message:
            given = message.rsplit("Given value:", 1)[-1].strip() if "Given value:" in message else "?"
            return ConfigError(f"{key} must be {requirement}; got {given}")
    if "arguments are required" in message:  # a subcommand without a config: say where one comes from
        return ConfigError(f"{message.strip()} (give a config: --config configs/sapo.yaml, or any file in configs/)")
    return err


def _yaml_or_none(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def check_yaml_files(args: list[str]) -> None:
    """Refuse a ``--config`` file that does not exist or is not valid YAML, naming the file, line and column."""
    paths = [b for a, b in zip(args, args[1:]) if a == "--config"] + [a[9:] for a in args if a.startswith("--config=")]
    for path in paths:
        try:
            text = Path(path).read_text()
        except (OSError, ValueError):
            if isinstance(_yaml_or_none(path), dict):
                continue  # YAML text given in place of a file (compare's cells): jsonargparse reads it
            missing_path("--config", path)
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(err, "problem", None) or err
            raise ConfigError(f"--config must be a valid YAML file; got {path}, "
                              f"which fails{where}: {problem}") from None


def main(args: list[str] | None = None) -> None:
    """LightningCLI's ``fit``, ``validate`` and ``test`` (``sapo-lightning`` dispatches here).

    Bad input ends with one line on stderr naming the option and its allowed range, and
    exit status 2, before any file is written.
    """
    # "Seed set to N" would stand before an error line; the seed is in the run's config.yaml.
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    # old_policy is kept in eval mode on purpose (it only samples); Lightning warns about any such module.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    # RunCheckpoint saves the state after the batch's updates on purpose: the state global_step names.
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
    # Lightning's advert for its cloud logger, at every start, has no switch (Lightning-AI/pytorch-lightning#21294).
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_a_tip)
    # Lightning's CombinedLoader builds torch's deprecated LeafSpec (torch >= 2.10): its code, not ours, to change.
    warnings.filterwarnings("ignore", r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning,
                            "lightning.pytorch.utilities._pytree")
    try:
        check_yaml_files(sys.argv[1:] if args is None else list(args))
        SAPOCLI(
            RLModule,
            QueryDataModule,
            args=args,
            parser_kwargs={"exit_on_error": False},
            save_config_kwargs={"overwrite": False},
        )
    except ConfigError as err:
        _exit_with(err, 2)
    except ArgumentError as err:
        _exit_with(_union_error(err), 2)
    except NonFiniteTraining as err:  # the run diverged: every rank stopped at the same step
        end_process_group()
        _exit_with(err, 1)
    except RunFailed as err:  # a reward function or environment raised on this rank; its checkpoints stay
        _exit_with(err, 1)
    else:
        end_process_group()  # every rank finished the run


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("💡 Tip:")


def _exit_with(err: Exception, status: int) -> None:
    message = " ".join(str(err).split())
    if rank_zero_only.rank == 0:  # every DDP rank raises it; the user reads it once
        print(f"sapo-lightning: error: {message}", file=sys.stderr)
    raise SystemExit(status) from None
