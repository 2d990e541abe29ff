"""Serves the app with uvicorn under the HTTP server's limits: `python -m app.serve` (Makefile, Dockerfile).

uvicorn alone keeps a connection open for as long as its first request's headers take to arrive, and its
default parser (httptools, when installed) takes headers of any size. Here the h11 parser caps the request
line and headers at MAX_HEADER_BYTES, a connection must deliver complete headers within HEADER_TIMEOUT of its
first byte (or of opening), an idle one is closed after KEEP_ALIVE_TIMEOUT, and connections beyond
MAX_CONNECTIONS are closed as they open. Host, port and workers: UVICORN_HOST, UVICORN_PORT, WEB_CONCURRENCY.
"""

from __future__ import annotations

import asyncio
import os

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.settings import Settings, _integer

SETTINGS = Settings.from_env()
_TOO_LARGE_BODY = (
    b'{"error": {"code": "headers_too_large", "message": "The request line and headers are larger '
    b'than the server accepts."}}'
)
HEADERS_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n" % len(_TOO_LARGE_BODY) + _TOO_LARGE_BODY
)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a deadline and a size limit for the request headers (h11 checks its own
    only while headers are incomplete, so headers that arrive in one read could pass) and a cap on open
    connections."""

    header_timeout: float = SETTINGS.header_timeout
    max_header_bytes: int = SETTINGS.max_header_bytes
    max_connections: int = SETTINGS.max_connections
    _header_deadline: asyncio.TimerHandle | None = None
    _header_bytes = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.close()
            return
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:  # these bytes start or continue a request's headers
            end = data.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end + 4
            if self._header_bytes > self.max_header_bytes:
                self.transport.write(HEADERS_TOO_LARGE)
                self.transport.close()
                return
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # a request's headers are still arriving
            self._await_headers()
        else:
            self._header_bytes = 0
            self._stop_waiting()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_headers(self) -> None:
        if self._header_deadline is None and not self.transport.is_closing():
            self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_waiting(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict:
    """The server's limits as uvicorn options."""
    return {
        "http": GuardedH11Protocol,
        "h11_max_incomplete_event_size": settings.max_header_bytes,
        "timeout_keep_alive": settings.keep_alive_timeout,
        # uvicorn answers 503 from this many connections on; GuardedH11Protocol closes the ones beyond the cap
        "limit_concurrency": settings.max_connections + 1,
        "backlog": settings.max_connections,
    }


def main() -> None:
    environ = os.environ
    uvicorn.run(
        "app.main:app",
        host=environ.get("UVICORN_HOST", "127.0.0.1").strip() or "127.0.0.1",
        port=_integer(environ, "UVICORN_PORT", 8000, 1),
        workers=_integer(environ, "WEB_CONCURRENCY", 1, 1),
        **uvicorn_options(SETTINGS),
    )


if __name__ == "__main__":
    main()
