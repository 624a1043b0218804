"""A program under a real pseudo-terminal, as a person's shell would run it: a controlling
terminal of a given size (so Ctrl-C typed into it arrives as SIGINT), and the output drained in
a thread (a full pty buffer would block the program) for the test to read."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
import threading

from tests.helpers.wait import wait_until

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
REDRAW = "\r\x1b[K"  # how the live line is redrawn in place
LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


class PtyOutput:
    """Drains a pty master in a thread (a full pty buffer would block the daemon)."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.data = b""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            with self._lock:
                self.data += chunk

    def text(self) -> str:
        with self._lock:
            return self.data.decode("utf-8", "replace")

    def wait_for(self, needle: str, timeout: float = 20.0) -> bool:
        return wait_until(lambda: needle in self.text(), timeout, 0.05)

    def drawn_lines(self) -> list[str]:
        """Every state of the live line, as drawn (escapes kept): what follows each redraw, except
        the log records (timestamped) printed above it."""
        parts = [re.split(r"[\r\n]", part, maxsplit=1)[0] for part in self.text().split(REDRAW)[1:]]
        return [p for p in parts if not LOG_RECORD.match(ANSI.sub("", p))]


def become_terminal_session() -> None:
    # In the child: a new session whose controlling terminal is the pty on stdin, so Ctrl-C
    # typed into the master reaches it as SIGINT, exactly like a shell's foreground job.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def spawn_in_pty(
    argv: list[str], env: dict[str, str], columns: int = 0, rows: int = 0
) -> tuple[subprocess.Popen[bytes], int, PtyOutput]:
    """Start `argv` on a new pty (sized when `columns` is given); returns the process, the master
    descriptor (write b"\\x03" to it for Ctrl-C) and its drained output."""
    master, slave = pty.openpty()
    if columns:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows or 24, columns, 0, 0))
    proc = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=become_terminal_session, env=env
    )
    os.close(slave)
    return proc, master, PtyOutput(master)
