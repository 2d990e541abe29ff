"""The probes: /healthz (alive), /readyz (the model is loaded) and /metrics (Prometheus), outside /v1."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.dependencies import EditorDep, ServiceDep
from app.openapi import error_responses
from app.schemas import Health, Readiness

router = APIRouter()


@router.get("/healthz", summary="The process is alive", tags=["probes"], response_model=Health)
async def healthz() -> Health:
    return Health()


@router.get(
    "/readyz",
    summary="The model is loaded and requests can be served",
    tags=["probes"],
    response_model=Readiness,
    responses=error_responses(503),
)
async def readyz(editor: EditorDep) -> Readiness:
    return Readiness()


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    tags=["probes"],
    response_class=Response,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
            "description": "Request counts, latency histograms, faces processed.",
        }
    },
)
async def metrics(service: ServiceDep) -> Response:
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
