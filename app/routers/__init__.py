"""The routes, a module per tag: edits, analysis and model_info under /v1 (behind the API key), and probes.

Endpoints that decode photos or run the model are plain `def`: FastAPI runs them in worker threads, and
the inference gate bounds how many run at once. Images are returned as files, or as JSON with base64
when the request says `Accept: application/json`.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.dependencies import require_api_key
from app.openapi import error_responses


def v1_router() -> APIRouter:
    """A router whose routes lie under /v1, check the key again and document its 401. The prefix is the
    routes' own, not added where the app includes them, so that metrics and logs name the whole path."""
    return APIRouter(prefix="/v1", dependencies=[Depends(require_api_key)], responses=error_responses(401))
