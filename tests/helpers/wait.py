"""The one way tests wait: poll a condition against a deadline (never a fixed sleep to synchronise)."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], bool], timeout: float = 20.0, interval: float = 0.02) -> bool:
    """True as soon as `predicate()` holds; False if it still does not after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)  # polls a condition with a deadline, not a fixed wait
    return predicate()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for health listeners and collectors)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
