"""Every error leaves the service as `{"error": {"code": ..., "message": ...}}` with a message for people."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.gate import ServerBusy
from app.imaging import ImageError
from model.edit_rules import EditError

log = logging.getLogger("app")

RETRY_AFTER_SECONDS = 5
BUSY = "The service is busy. Try again in a few seconds."
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "upload_timeout",
    413: "upload_too_large",
    415: "unsupported_media_type",
    503: "uploads_busy",
}


class ApiError(Exception):
    def __init__(self, status_code: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status_code: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status_code, headers=headers)


def _validation_message(exc: RequestValidationError) -> str:
    """The fields at fault and why, without echoing what was sent (it may be the photo)."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "header"))
        reason = error.get("msg", "is invalid").removeprefix("Value error, ")
        parts.append(f"{field}: {reason}" if field else reason)
    return "; ".join(parts) or "The request is invalid."


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status_code, exc.code, exc.message, exc.headers)

    @app.exception_handler(ImageError)
    @app.exception_handler(EditError)
    async def refusal(request: Request, exc: ImageError | EditError) -> JSONResponse:
        """A photo that cannot be used or edited: each error carries its own status and code."""
        return error_response(exc.status_code, exc.code, str(exc))

    @app.exception_handler(ServerBusy)
    async def busy(request: Request, exc: ServerBusy) -> JSONResponse:
        return error_response(503, "busy", BUSY, {"Retry-After": str(RETRY_AFTER_SECONDS)})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(422, "invalid_parameters", _validation_message(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return error_response(
            exc.status_code,
            _HTTP_CODES.get(exc.status_code, "http_error"),
            str(exc.detail),
            getattr(exc, "headers", None),
        )


class CatchAllMiddleware:
    """Answers any unexpected exception with a generic 500 and logs its type only: a message or traceback
    could carry data from the upload. It does not re-raise, so the server logs no traceback either."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        response_started = False

        async def send_tracking_start(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking_start)
        except Exception as exc:
            if response_started:
                raise  # nothing more can be sent: the server closes the connection
            route = getattr(scope.get("route"), "path", "unmatched")
            log.error("unexpected %s while answering %s %s", type(exc).__name__, scope["method"], route)
            response = error_response(500, "internal_error", "Something went wrong on our side. Please try again.")
            await response(scope, receive, send)
