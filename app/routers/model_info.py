"""What the model is: GET /v1/model."""

from __future__ import annotations

from app.dependencies import EditorDep
from app.openapi import error_responses
from app.routers import v1_router
from app.schemas import ModelInfo

router = v1_router()


@router.get(
    "/model",
    name="model_info",
    summary="What the model is",
    tags=["model"],
    response_model=ModelInfo,
    responses=error_responses(503),
)
async def model_info(editor: EditorDep) -> ModelInfo:
    return ModelInfo(**editor.info())
