"""Slow and idle clients: deadlines for a request's headers and body, and a bound on open connections.

uvicorn times out only the idle gap *between* requests, and resets even that on every byte: a client that sends its
headers one byte at a time, or declares a Content-Length it never sends, holds a connection (and, once many do, the
server) for ever, and a stalled upload makes a SIGTERM wait out the whole graceful-shutdown period. An ASGI middleware
cannot help, since it runs only once the headers are parsed. :class:`GuardedH11Protocol` is uvicorn's h11 protocol
with three additions, each answered with the JSON error every other refusal gets:

* the headers must arrive within ``header_timeout_s`` of the connection opening (or of the previous answer): 408;
* the body must arrive within ``body_timeout_s`` of the headers: 408;
* a connection beyond ``max_connections`` open ones is answered at once: 503 with ``Retry-After``, then closed;

and on shutdown a body still arriving gets a short grace (:data:`SHUTDOWN_GRACE_S`), then 503, so a stalled upload
cannot hold the drain. Both deadlines are absolute, not idle timeouts: trickling bytes does not extend them.
"""

from __future__ import annotations

import asyncio
import functools
import http
import logging
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["SHUTDOWN_GRACE_S", "ConnectionLimits", "protocol_class"]

SHUTDOWN_GRACE_S = 2.0
_LOG = logging.getLogger("dogclf.serve")


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take to send a request, and how many connections may be open.

    Attributes:
        header_timeout_s: Seconds for the request line and headers to arrive (408 after).
        body_timeout_s: Seconds for the body to arrive once the headers have (408 after): 60 s lets a 16 MiB
            upload come at 280 kB/s.
        max_connections: Open connections; one more is answered 503 and closed.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int = 512

    def __post_init__(self) -> None:
        for name, flag in (("header_timeout_s", "--header-timeout"), ("body_timeout_s", "--body-timeout")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"{name} ({flag} of dogclf serve) must be a number of seconds > 0, got {value!r}.")
        if isinstance(self.max_connections, bool) or not isinstance(self.max_connections, int):
            raise ValueError(f"max_connections must be an integer >= 1, got {self.max_connections!r}.")
        if self.max_connections < 1:
            raise ValueError(
                f"max_connections (--max-connections of dogclf serve) must be >= 1, got {self.max_connections}."
            )


def protocol_class(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """Uvicorn's h11 protocol with ``limits`` enforced, to pass as ``uvicorn.Config(http=...)``."""
    return type("GuardedH11Protocol", (_guarded_base(),), {"limits": limits})


@functools.cache
def _guarded_base() -> type[asyncio.Protocol]:
    """The ``GuardedH11Protocol`` class, defined on first use (uvicorn and h11 are imported only by serving)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):  # type: ignore[misc]
        """uvicorn's h11 protocol with header and body deadlines and a bound on open connections."""

        limits = ConnectionLimits()

        def connection_made(self, transport: Any) -> None:
            self._timer: asyncio.TimerHandle | None = None
            self._phase: str | None = None
            self._deadline = 0.0
            super().connection_made(transport)
            if len(self.connections) > self.limits.max_connections:
                _LOG.warning("refused a connection: %d are open (--max-connections)", len(self.connections) - 1)
                self._refuse(
                    503,
                    f"The server has {self.limits.max_connections} connections open, its limit; retry after 1 s.",
                    {"Retry-After": "1"},
                )
                return
            self._follow()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._follow()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def shutdown(self) -> None:
            super().shutdown()
            if self._phase == "body" and not self.transport.is_closing():
                remaining = self._deadline - time.monotonic()
                self._arm("shutdown", min(remaining, SHUTDOWN_GRACE_S))

        def _follow(self) -> None:
            """Arms the deadline of the part of a request being received (none while answering)."""
            state = self.conn.their_state
            phase = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
            if phase == self._phase or self.transport.is_closing() or self._phase == "shutdown":
                return
            self._disarm()
            if phase is not None:
                self._arm(phase, self.limits.header_timeout_s if phase == "headers" else self.limits.body_timeout_s)

        def _arm(self, phase: str, seconds: float) -> None:
            self._disarm()
            self._phase = phase
            self._deadline = time.monotonic() + seconds
            self._timer = self.loop.call_later(max(seconds, 0.0), self._expired)

        def _disarm(self) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._phase = None, None

        def _expired(self) -> None:
            phase = self._phase
            self._timer = None
            if phase == "shutdown":
                self._refuse(503, "The server is shutting down and the request body had not arrived; send it again.")
            elif phase == "headers":
                seconds = self.limits.header_timeout_s
                self._refuse(408, f"The request headers did not arrive within {seconds:g} s; send them at once.")
            elif phase == "body":
                seconds = self.limits.body_timeout_s
                self._refuse(
                    408,
                    f"The request body did not arrive within {seconds:g} s of its headers (is Content-Length more "
                    "than the bytes sent?); send the whole body.",
                )

        def _refuse(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
            """Answers ``status`` with the JSON error (unless an answer has begun) and closes the connection."""
            self._disarm()
            if self.transport.is_closing():
                return
            if self.client:
                _LOG.info("%s:%d - %d: %s", *self.client[:2], status, message)
            if self.cycle is None or not self.cycle.response_started:
                self.transport.write(_raw_error(status, message, headers or {}))
            self.transport.close()

    return GuardedH11Protocol


def _raw_error(status: int, message: str, headers: dict[str, str]) -> bytes:
    """A whole HTTP/1.1 error answer, written outside h11's state machine (the connection closes after it)."""
    from dogclf.serving.codec import JSON_CONTENT_TYPE, RequestError, encode_error

    body = encode_error(RequestError(status, message)).encode("utf-8")
    fields = {"content-type": JSON_CONTENT_TYPE, "content-length": str(len(body)), "connection": "close", **headers}
    head = f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return head.encode("latin-1") + b"\r\n" + body
