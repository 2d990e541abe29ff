"""Limits on request bodies, checked as the body arrives: bytes per request (on Content-Length before reading,
and while reading), bytes held by all uploads in progress together, and how long a body may take."""

from __future__ import annotations

import asyncio
import time

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import error_response
from app.imaging import megabytes

UPLOADS_BUSY = "The service is receiving too many uploads at once. Try again in a few seconds."
BODY_TIMEOUT = "The upload stalled or took too long and was closed. Send it again."
CLOSE = {"Connection": "close"}  # the rest of a refused body is not read: the connection cannot be reused


def upload_too_large_message(max_upload_bytes: int) -> str:
    return f"The upload is larger than the limit of {megabytes(max_upload_bytes)}."


class BodyLimitMiddleware:
    """`max_body_bytes` per request; `max_uploading_bytes` over every request whose body is held (received
    and not yet answered), so that slow or stalled uploads cannot pin the memory of the process; a body
    must keep arriving (`idle_timeout` seconds between pieces) and be complete within `timeout` seconds."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        message: str,
        max_uploading_bytes: int,
        idle_timeout: float,
        timeout: float,
        retry_after: int,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.message = message
        self.max_uploading_bytes = max_uploading_bytes
        self.idle_timeout = idle_timeout
        self.timeout = timeout
        self.retry_after = retry_after
        self.uploading_bytes = 0  # the event loop is the only writer: no lock needed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await error_response(413, "upload_too_large", self.message, CLOSE)(scope, receive, send)
            return
        reserved = int(declared) if declared.isdigit() else 0
        if self.uploading_bytes + reserved > self.max_uploading_bytes:
            await self._busy(scope, receive, send)
            return
        self.uploading_bytes += reserved
        held = reserved
        received = 0
        deadline = time.monotonic() + self.timeout
        body_done = False

        async def receive_within_limits() -> Message:
            nonlocal received, held, body_done
            if body_done:
                return await receive()  # after the body only a disconnect can come: no deadline
            wait = min(self.idle_timeout, deadline - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.0))
            except TimeoutError:
                raise HTTPException(408, BODY_TIMEOUT, CLOSE) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_body_bytes:
                    raise HTTPException(413, self.message, CLOSE)
                if received > held:
                    if self.uploading_bytes + received - held > self.max_uploading_bytes:
                        raise HTTPException(503, UPLOADS_BUSY, {"Retry-After": str(self.retry_after), **CLOSE})
                    self.uploading_bytes += received - held
                    held = received
            return message

        try:
            await self.app(scope, receive_within_limits, send)
        finally:
            self.uploading_bytes -= held

    async def _busy(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(503, "uploads_busy", UPLOADS_BUSY, {"Retry-After": str(self.retry_after), **CLOSE})
        await response(scope, receive, send)
