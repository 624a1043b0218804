"""A tiny HTTP server for /healthz, /readyz and /metrics (no framework: three fixed routes)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import orjson

from audit_otlp.runtime.metrics import Metrics
from audit_otlp.runtime.runstate import RunState

log = logging.getLogger(__name__)

LOOP_STALL_LIMIT = 30.0  # /healthz fails when the event loop's heartbeat is older than this


def readiness(state: RunState, failing_after: float) -> tuple[bool, dict[str, object]]:
    checks = {
        "checkpoint_loaded": state.checkpoint_loaded,
        "file_reachable": state.file_reachable,
        "exports_ok": state.failing_for() < failing_after,
        "checkpoint_writable": state.checkpoint_error is None,
    }
    ready = all(checks.values())
    detail: dict[str, object] = dict(checks)
    if state.last_error and not checks["exports_ok"]:
        detail["last_error"] = state.last_error
    if state.checkpoint_error:
        detail["checkpoint_error"] = state.checkpoint_error
    return ready, detail


class HealthServer:
    def __init__(
        self,
        host: str,
        port: int,
        state: RunState,
        metrics: Metrics,
        failing_after: float,
        before_metrics: Callable[[], None] | None = None,
    ) -> None:
        self.host, self.port = host, port
        self.state = state
        self.metrics = metrics
        self.failing_after = failing_after
        self.before_metrics = before_metrics
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        sock = self._server.sockets[0].getsockname()
        self.port = sock[1]
        log.info("health endpoints on http://%s:%d (/healthz /readyz /metrics)", self.host, self.port)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5.0)
            while (await asyncio.wait_for(reader.readline(), 5.0)) not in (b"\r\n", b"\n", b""):
                pass  # headers are not needed
            parts = request_line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else "/"
            status, content_type, body = self._route(parts[0] if parts else "", path)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("latin-1")
            writer.write(head + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    def _route(self, method: str, path: str) -> tuple[str, str, bytes]:
        if method not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"method not allowed\n"
        if path == "/healthz":
            stalled = time.monotonic() - self.state.loop_heartbeat
            ok = stalled < LOOP_STALL_LIMIT
            body = orjson.dumps({"status": "ok" if ok else "stalled", "loop_lag_seconds": round(stalled, 3)})
            return ("200 OK" if ok else "503 Service Unavailable"), "application/json", body
        if path == "/readyz":
            ready, detail = readiness(self.state, self.failing_after)
            body = orjson.dumps({"ready": ready, **detail})
            return ("200 OK" if ready else "503 Service Unavailable"), "application/json", body
        if path == "/metrics":
            if self.before_metrics is not None:
                self.before_metrics()
            return "200 OK", self.metrics.content_type, self.metrics.render()
        return "404 Not Found", "text/plain", b"not found\n"
