"""File-system helpers that make directory changes durable.

Creating a file or directory changes its parent directory, and on a file system that follows
POSIX to the letter that change survives a power loss only once the parent is fsynced. ext4's
journal usually hides the difference; we do not rely on it.
"""

from __future__ import annotations

import os


def fsync_directory(path: str | os.PathLike[str]) -> None:
    """fsyncs a directory, making the creation, renaming and removal of its entries durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: str | os.PathLike[str]) -> None:
    """``os.makedirs(path, exist_ok=True)``, then fsyncs the parent of each directory it made."""
    path = os.path.abspath(os.fspath(path))
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            if not os.path.isdir(d):
                raise
        fsync_directory(os.path.dirname(d))
