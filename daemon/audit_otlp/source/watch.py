"""Wake-ups for the tailer: inotify on Linux (through the kernel API, via ctypes), polling elsewhere.

Notifications only shorten the wait; the tailer's periodic stat is the source of truth, so a
missed event (NFS, overflow) costs at most one poll interval, and an idle file costs one stat
per interval and no busy loop (Vector #25064).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import struct
from pathlib import Path

log = logging.getLogger(__name__)

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_DIR_MASK = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF
)
_EVENT_HEADER = struct.Struct("iIII")
_WRITES = IN_MODIFY | IN_CLOSE_WRITE  # what an append makes (a truncation too): anything else moved a name


class _Inotify:
    """A non-blocking inotify descriptor watching directories for events about some names."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self.fd = fd
        self.watched: dict[int, Path] = {}

    def watch(self, directory: Path) -> None:
        if directory in self.watched.values():
            return
        wd = self._add_watch(self.fd, os.fsencode(directory), _DIR_MASK)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {directory}")
        self.watched[wd] = directory

    def read_events(self) -> list[tuple[bytes, int]] | None:
        """(name, mask) of the pending events; None means 'something, unknown' (overflow)."""
        events: list[tuple[bytes, int]] = []
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return events
        pos = 0
        while pos + _EVENT_HEADER.size <= len(data):
            _wd, mask, _cookie, length = _EVENT_HEADER.unpack_from(data, pos)
            pos += _EVENT_HEADER.size
            name = data[pos : pos + length].rstrip(b"\0")
            pos += length
            if mask & IN_Q_OVERFLOW or mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                return None
            events.append((name, mask))
        return events

    def close(self) -> None:
        os.close(self.fd)


class FileWatcher:
    """Wakes `wait()` when a file of interest changes; never later than `poll_interval`."""

    def __init__(self, path: Path, poll_interval: float) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self._events: list[asyncio.Event] = [asyncio.Event()]  # one per waiter (reader, monitor)
        self._moved = asyncio.Event()  # a name of interest was created, moved, deleted (not just written)
        self._inotify: _Inotify | None = None
        self._prefixes: set[bytes] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def uses_inotify(self) -> bool:
        return self._inotify is not None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            self._inotify = _Inotify()
        except (OSError, AttributeError) as exc:
            log.info("inotify unavailable (%s); polling every %.1f s", exc, self.poll_interval)
            return
        self._loop.add_reader(self._inotify.fd, self._on_readable)
        self.follow(self.path)

    def follow(self, path: Path) -> None:
        """Watch `path`'s directory (and, for a symlink, its target's) for events about it."""
        if self._inotify is None:
            return
        targets = {path}
        try:
            targets.add(path.resolve())
        except OSError:
            pass
        for target in targets:
            self._prefixes.add(os.fsencode(target.name))
            try:
                self._inotify.watch(target.parent)
            except OSError as exc:
                log.debug("cannot watch %s: %s", target.parent, exc)

    def _on_readable(self) -> None:
        assert self._inotify is not None
        events = self._inotify.read_events()
        ours = None if events is None else [mask for name, mask in events if any(name.startswith(p) for p in self._prefixes)]
        if ours is None or ours or not events:
            self.notify()
        if ours is None or any(mask & ~_WRITES for mask in ours):
            self._moved.set()

    async def settle(self, seconds: float) -> None:
        """Let writes pile up for `seconds` (a busy writer makes one event per append), unless a
        name is created, moved or deleted meanwhile: that returns at once. Polling: no wait."""
        if self._inotify is None or self._moved.is_set():
            self._moved.clear()
            return
        waiter = asyncio.ensure_future(self._moved.wait())
        try:
            await asyncio.wait({waiter}, timeout=seconds)
        finally:
            waiter.cancel()
        self._moved.clear()

    def notify(self) -> None:
        for event in self._events:
            event.set()

    def channel(self) -> int:
        """A separate wake-up channel for another waiter (each waiter clears only its own)."""
        self._events.append(asyncio.Event())
        return len(self._events) - 1

    async def wait(self, timeout: float | None, channel: int = 0) -> bool:
        """Wait for a change or `timeout` (capped at the poll interval); True if woken by one."""
        event = self._events[channel]
        limit = self.poll_interval if timeout is None else min(timeout, self.poll_interval)
        if not event.is_set():
            # asyncio.wait, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the event fires, leaving a task that will not stop.
            waiter = asyncio.ensure_future(event.wait())
            try:
                await asyncio.wait({waiter}, timeout=max(limit, 0))
            finally:
                waiter.cancel()
            if not event.is_set():
                return False
        event.clear()
        return True

    def close(self) -> None:
        if self._inotify is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None
