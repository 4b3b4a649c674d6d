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
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from sapo_lightning.checks import check_int
from sapo_lightning.loop.schedule import crossed_multiple


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a hidden temp file beside the target, fsync, ``os.replace``, fsync the directory.

    Whenever the process dies, the target path holds either the previous complete checkpoint
    or the new complete one, never a partial file. A kill during a write leaves at most a
    hidden ``.NAME.XXXXXXXX.tmp`` next to it, which nothing loads and which can be deleted.
    Remote paths (``s3://`` ...) go through Lightning's writer unchanged. Loading is
    Lightning's (``weights_only`` as the Trainer asks; the CLI asks for ``True``).
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if not isinstance(get_filesystem(path), LocalFileSystem):
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
    """ModelCheckpoint on the RL loop's schedule: every N optimizer steps and at the end of every run.

    ModelCheckpoint decides what is saved and how (``step=S.ckpt`` and ``last.ckpt``, top-k,
    the CheckpointIO); this subclass only decides when, through public hooks:

    - every ``every_n_train_steps`` optimizer steps, at the first batch end at or past each
      multiple (a batch makes the module's ``steps_per_rollout`` steps, so ``global_step`` can jump over N);
      the same rule as :class:`~sapo_lightning.callbacks.OldPolicySync`, :func:`crossed_multiple`;
    - at the batch that reaches ``max_steps``, so the saved loop state is "mid-epoch" and a
      resumed run continues exactly; and at the end of a run stopped otherwise.

    A resumed run does not adopt the file list of the run it resumed from: it writes into its
    own directory and removes only files it wrote itself, so the earlier run's files stay intact.

    Args:
        every_n_train_steps: Optimizer steps between saves; 0 or null saves only at the end of the run.
    """

    def __init__(self, every_n_train_steps: int | None = 500, **kwargs: Any) -> None:
        self.every_n_steps = check_int("every_n_train_steps", every_n_train_steps, 0, allow_none=True) or 0
        super().__init__(every_n_train_steps=1, **kwargs)  # ModelCheckpoint saves whenever it is asked to

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        step = trainer.global_step
        periodic = self.every_n_steps > 0 and crossed_multiple(step, pl_module.steps_per_rollout, self.every_n_steps)
        if periodic or step == trainer.max_steps:
            super().on_train_batch_end(trainer, pl_module, *args)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_batch_end(trainer, pl_module, None, None, 0)  # a no-op if the last batch saved

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep nothing from the resumed run: its paths are its own."""


def find_last(root: str | os.PathLike) -> str | None:
    """The newest checkpoint of any run under ``root`` (``<root>/version_*/checkpoints/*.ckpt``), or None.

    ``last.ckpt`` (a symlink to its run's newest ``step=N.ckpt``) is chosen over the file it names.
    Lightning relinks it by removing it and linking anew, so a ``kill -9`` in that instant can leave it
    missing or naming a removed file; the newest step file that exists is then the run's end.
    """
    found = [p for p in Path(root).glob("*/checkpoints/*.ckpt") if p.exists()]  # exists(): a dangling link is not
    newest = max(found, key=lambda p: (p.stat().st_mtime_ns, re.fullmatch(r"last(-v\d+)?\.ckpt", p.name) is not None),
                 default=None)
    return None if newest is None else str(newest)
