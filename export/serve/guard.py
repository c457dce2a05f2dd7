"""uvicorn's HTTP protocol with the bounds a server facing hostile clients needs (the
single-machine engine).

uvicorn times out idle keep-alive connections but not a connection that never finishes its
headers or its body: 600 clients sending one byte every 2 s would hold 600 connections for
ever. Here every request must arrive whole (headers and body) within ``request_timeout``
seconds of its first byte (of the connection, for the first request): past it the client gets
408 in the protocol's JSON and the connection is closed. Past ``max_connections`` open
connections a new one is answered 503 with Retry-After and closed at once, before anything is
read. On shutdown a connection idle between requests is given a short grace, so a request
already on its way is answered (with ``Connection: close``) rather than cut off.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

REASONS = {408: "Request Timeout", 503: "Service Unavailable"}
DRAIN_GRACE = 0.5  # seconds an idle connection may still bring a request when draining


@dataclass(frozen=True)
class Guard:
    """The bounds (picklable: uvicorn ships its config to worker processes)."""

    request_timeout: float = 5.0
    max_connections: int = 2048


class GuardedHttp(HttpToolsProtocol):
    """HttpToolsProtocol + a deadline per request, a bound on connections, a gentle drain."""

    def __init__(self, config: Any, server_state: Any, app_state: Any,
                 _loop: asyncio.AbstractEventLoop | None = None):
        super().__init__(config, server_state, app_state, _loop)
        self.guard: Guard = getattr(config, "guard", None) or Guard()
        self.deadline: asyncio.TimerHandle | None = None
        self.draining = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.guard.max_connections:
            self.refuse(503, f"more than {self.guard.max_connections} open connections; try "
                             "again shortly", retry_after=1)
            return
        self.arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        super().connection_lost(exc)

    def arm(self) -> None:
        self.disarm()
        self.deadline = self.loop.call_later(self.guard.request_timeout, self.expire)

    def disarm(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self.deadline is None:
            self.arm()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self.draining and self.cycle is not None:
            self.cycle.keep_alive = False

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.disarm()

    def expire(self) -> None:
        """The request did not arrive in time: 408 (unless an answer has begun), close."""
        self.deadline = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and self.cycle.response_started:
            self.transport.close()
            return
        self.refuse(408, f"the request did not arrive within {self.guard.request_timeout:g}s")

    def refuse(self, status: int, message: str, retry_after: int | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        head = [f"HTTP/1.1 {status} {REASONS[status]}", "content-type: application/json",
                f"content-length: {len(body)}", "connection: close"]
        if retry_after is not None:
            head.append(f"retry-after: {retry_after}")
        self.transport.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        self.transport.close()

    def shutdown(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.draining = True
            self.loop.call_later(DRAIN_GRACE, self._close_if_idle)
        else:
            self.cycle.keep_alive = False

    def _close_if_idle(self) -> None:
        if self.cycle is None or self.cycle.response_complete:
            self.transport.close()


__all__ = ["DRAIN_GRACE", "Guard", "GuardedHttp"]
