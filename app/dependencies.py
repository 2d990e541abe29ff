"""What the routes depend on: the service, the API key and the loaded editor."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.auth import UNAUTHORIZED, key_is_valid
from app.errors import RETRY_AFTER_SECONDS, ApiError
from app.service import Service
from model.editor import AgeEditor

MODEL_LOADING = "The model is still loading. Try again in a few seconds."
MODEL_UNAVAILABLE = "The model could not be loaded. Please try again later."


def get_service(request: Request) -> Service:
    return request.app.state.service


bearer = HTTPBearer(auto_error=False, description="Needed only when the service runs with API_KEYS set.")


async def require_api_key(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """The key, checked again where the routes declare it (ApiKeyMiddleware answers before the body)."""
    keys = get_service(request).settings.api_keys
    if keys and not key_is_valid(request.headers.get("authorization", ""), keys):
        raise ApiError(401, "unauthorized", UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})


async def get_editor(request: Request) -> AgeEditor:
    service = get_service(request)
    if service.editor is None:
        if service.load_error:
            raise ApiError(503, "model_unavailable", MODEL_UNAVAILABLE)
        raise ApiError(503, "model_loading", MODEL_LOADING, {"Retry-After": str(RETRY_AFTER_SECONDS)})
    return service.editor


ServiceDep = Annotated[Service, Depends(get_service)]
EditorDep = Annotated[AgeEditor, Depends(get_editor)]
