"""Files a command writes get the modes the user's umask asks for, as ``open`` and ``mkdir`` give them.

safetensors (0.8) writes through a temporary file of mode 0600 that it renames into place, and
``tempfile.mkdtemp`` makes its directory 0700: left alone, an exported model or a GGUF cache entry
would be readable by its owner only, whatever the umask.
"""

from __future__ import annotations

import os
from pathlib import Path


def current_umask() -> int:
    """The process's umask (``os.umask`` can only read it by setting it, so it is set back at once)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def apply_umask(directory: str | os.PathLike, itself: bool = False) -> None:
    """Give what ``directory`` holds the default modes: 0777 & ~umask to directories, 0666 & ~umask to files.

    Args:
        directory: A directory whose contents this process has just written.
        itself: Also ``directory`` (a ``mkdtemp`` one); false leaves a directory the user made as it is.
    """
    mask = current_umask()
    for root, _, files in os.walk(directory):
        if itself or Path(root) != Path(directory):
            os.chmod(root, 0o777 & ~mask)
        for name in files:
            os.chmod(Path(root) / name, 0o666 & ~mask)
