"""Files and folders that hold readers' addresses (the database, the outbox, exports, keys) are
created readable by their owner only, whatever the umask."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

__all__ = ["private_folder", "open_private", "create_private"]

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def private_folder(path: Path) -> Path:
    """Make `path` (and missing parents) as 0700; a folder already there is left as it is."""
    if not path.is_dir():
        if not path.parent.is_dir():
            private_folder(path.parent)
        try:
            path.mkdir(mode=FOLDER_MODE)
        except FileExistsError:
            pass
        else:
            os.chmod(path, FOLDER_MODE)  # mkdir's mode is masked by the umask
    return path


def open_private(path: Path, mode: str = "w", **kwargs: Any) -> IO[Any]:
    """open() for writing, the file created (or truncated) as 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # a file that was there keeps no wider mode
    return os.fdopen(fd, mode, **kwargs)


def create_private(path: Path) -> None:
    """An empty 0600 file, if none is there (SQLite then gives its WAL and SHM files its mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    os.fchmod(fd, FILE_MODE)
    os.close(fd)
