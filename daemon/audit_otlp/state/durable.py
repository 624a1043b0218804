"""Durable writes: bytes are on stable storage, directory entry included, before the call returns.

The checkpoint store (replace a file atomically) and the dead-letter and receipt records (append
to a file) both promise "on disk before the checkpoint moves"; this is the one place that keeps
that promise, so the fsync of the file and of its directory cannot drift apart between them.
"""

from __future__ import annotations

import os
from pathlib import Path

import aiofiles
import aiofiles.os


def replace_atomically(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync it, rename it over `path`, fsync the
    directory; raises OSError with the previous file intact (and no temp file left behind)."""
    tmp = path.parent / f".{path.name}.tmp"
    try:
        _write_synced(tmp, os.O_TRUNC, data)
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


async def append_durably(path: Path, data: bytes) -> None:
    """Append `data` to `path` (created 0600 with its directory if missing) and fsync it; a newly
    created file's directory is fsynced too, so its entry survives a crash. Raises OSError.
    Four hops to aiofiles' worker threads (open, write, fsync, close): the loop never waits on the disk."""
    opener = _AppendOpener()
    async with aiofiles.open(path, "ab", buffering=0, opener=opener) as out:
        view = memoryview(data)
        while view:
            view = view[await out.write(view) :]
        await aiofiles.os.wrap(os.fsync)(out.fileno())
    if opener.created:
        await aiofiles.os.wrap(fsync_directory)(path.parent)


class _AppendOpener:
    """The `opener` of aiofiles.open for an append: opens an existing file, or creates it (0600,
    its directory too) and says so, all in the open's own hop to the worker thread."""

    def __init__(self) -> None:
        self.created = False

    def __call__(self, path: str, flags: int) -> int:
        try:
            return os.open(path, flags & ~os.O_CREAT)
        except FileNotFoundError:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.created = True
            return os.open(path, flags, 0o600)


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new entry in `directory` durable (Vector skips this; a crash may not)."""
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_synced(path: Path, mode: int, data: bytes) -> None:
    """Open `path` (created 0600) with `mode` (truncate or append), write all of `data`, fsync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | mode, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
