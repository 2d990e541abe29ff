"""API keys, checked on the request's headers before any of its body is read."""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import error_response

UNAUTHORIZED = "A valid API key is needed: send the header `Authorization: Bearer <key>`."
PROTECTED_PREFIXES = ("/v1/", "/metrics")


def key_is_valid(authorization: str, keys: tuple[str, ...]) -> bool:
    """Whether `Authorization: Bearer <key>` names one of `keys`, compared in constant time."""
    scheme, _, given = authorization.partition(" ")
    given_bytes = given.strip().encode() if scheme.lower() == "bearer" else b""
    return any(hmac.compare_digest(given_bytes, key.encode()) for key in keys)


def is_protected(path: str) -> bool:
    return path == "/v1" or path.startswith(PROTECTED_PREFIXES)


class ApiKeyMiddleware:
    """With keys set, /v1 and /metrics answer 401 to a request without a valid key at once: its body is never
    read, so uploads without a key cannot hold memory or a worker."""

    def __init__(self, app: ASGIApp, keys: tuple[str, ...]) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and self.keys
            and scope["method"] != "OPTIONS"
            and is_protected(scope["path"])
            and not key_is_valid(Headers(scope=scope).get("authorization", ""), self.keys)
        ):
            response = error_response(
                401, "unauthorized", UNAUTHORIZED, {"WWW-Authenticate": "Bearer", "Connection": "close"}
            )
            await response(scope, receive, send)  # Connection: close, so the body is never read
            return
        await self.app(scope, receive, send)
