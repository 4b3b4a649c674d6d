"""Checkpoints that survive ``kill -9`` and runs that never touch each other's files.

Lightning's own writer (``TorchCheckpointIO`` → ``_atomic_save``) serialises to memory, then
writes through an fsspec transaction whose local temp file is made by ``tempfile.mkstemp()``
in the *system* temp dir and moved into place by ``shutil.move``. That is a rename (atomic)
only when ``$TMPDIR`` and the checkpoint directory share a filesystem; otherwise (tmpfs
``/tmp``, a checkpoint disk, NFS, Lustre) ``shutil.move`` copies into the target path itself,
and a kill during the copy leaves a truncated file where the last good checkpoint was.
Nothing is fsync'ed either. :class:`AtomicCheckpointIO` closes both holes on local paths.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a hidden temp file beside the target, fsync, ``os.replace``, fsync the directory.

    Whenever the process dies, the target path holds either the previous complete checkpoint
    or the new complete one, never a partial file. A kill during a write leaves at most a
    hidden ``.NAME.XXXXXXXX.tmp`` next to it, which nothing loads and which can be deleted.
    Remote paths (``s3://`` ...) go through Lightning's writer unchanged. Loading is
    Lightning's (``weights_only`` as the Trainer asks; the CLI asks for ``True``).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options; got {storage_options!r}")
        target = Path(path).expanduser().absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode as any new file: 0o666 & ~umask
        try:
            with os.fdopen(fd, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())  # the bytes reach the disk before the name points at them
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        _fsync_directory(target.parent)  # the rename itself survives a power cut


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems and platforms cannot open a directory
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint for RL runs: periodic saves, a save at the end of every run, resume from any run.

    The CLI adds it to every run (as ``checkpoint``) with ``filename="{step}"``,
    ``save_last=True`` and ``every_n_train_steps=50``. With these defaults a run directory
    ends with ``step=N.ckpt`` (its newest checkpoint) and ``last.ckpt`` (the same state).
    On top of :class:`~lightning.pytorch.callbacks.ModelCheckpoint` (whose arguments it takes):

    - ``every_n_train_steps`` saves at the first batch end at or past each multiple of N
      optimizer steps, as :class:`~sapo_lightning.callbacks.OldPolicySync` syncs: a batch
      makes ``updates_per_rollout`` steps, so ``global_step`` can jump over N itself.
    - Every run saves when it ends: at the batch that reaches ``max_steps``, so the saved
      loop state is "mid-epoch" and a resumed run continues exactly, or at ``on_train_end``.
    - ``ckpt_path="last"`` takes the newest ``last*.ckpt`` of *every* run under the logger's
      root (``<root>/lightning_logs/version_*/checkpoints``), since each run writes in its own
      version directory.
    - A resumed run does not adopt the file list of the run it resumed from: it writes new
      names and removes only files it wrote itself, so the earlier run's files stay intact.
    """

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if pl_module.automatic_optimization:
            return super().on_train_batch_end(trainer, pl_module, *args)
        n, step = self._every_n_train_steps, trainer.global_step
        periodic = n >= 1 and step // n > self._last_global_step_saved // n
        if (periodic or _reached(step, trainer.max_steps)) and not self._should_skip_saving_checkpoint(trainer):
            self._save_now(trainer)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_global_step_saved = trainer.global_step  # a resumed run starts counting where it resumed

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_now(trainer)

    def _save_now(self, trainer: Trainer) -> None:
        candidates = self._monitor_candidates(trainer)
        if self.monitor is not None and self.monitor not in candidates:
            self._defer_save_until_validation = True  # as ModelCheckpoint: save once the metric exists
            return
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep nothing from the resumed run: its paths are its own (see the class docstring)."""

    def _find_last_checkpoints(self, trainer: Trainer) -> set[str]:
        found = super()._find_last_checkpoints(trainer)
        if self._per_run_directories() and trainer.loggers:
            logger = trainer.loggers[0]
            root = Path(logger.save_dir or trainer.default_root_dir, str(logger.name))
            last = re.compile(rf"^{re.escape(self.CHECKPOINT_NAME_LAST)}(-\d+)?{re.escape(self.FILE_EXTENSION)}$")
            found |= {os.path.normpath(p) for p in root.glob("*/checkpoints/*") if last.match(p.name)}
        return found

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self._per_run_directories()  # remembered before setup fills in dirpath
        super().setup(trainer, pl_module, stage)

    def _per_run_directories(self) -> bool:
        """True when Lightning picks the directory per run: no ``dirpath`` was given."""
        if not hasattr(self, "_per_run"):
            self._per_run = self.dirpath is None
        return self._per_run


def _reached(step: int, max_steps: int) -> bool:
    return max_steps >= 0 and step >= max_steps
