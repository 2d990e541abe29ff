"""The service: `create_app()` builds it from the settings; `uvicorn app.main:app` serves it."""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path

import anyio.to_thread
import torch
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.formparsers import MultiPartParser

from app.auth import ApiKeyMiddleware
from app.body_limit import BodyLimitMiddleware, upload_too_large_message
from app.errors import RETRY_AFTER_SECONDS, CatchAllMiddleware, install_error_handlers
from app.gate import InferenceGate
from app.imaging import set_decompression_limit
from app.metrics import Metrics, MetricsMiddleware
from app.routers import analysis, edits, model_info, probes
from app.security_headers import SecurityHeadersMiddleware
from app.service import Service, load_editor
from app.settings import Settings
from model.editor import AgeEditor

log = logging.getLogger("app")

STATIC_DIR = Path(__file__).parent / "static"
# room for the form fields and multipart boundaries around the photo
FORM_OVERHEAD_BYTES = 64 * 1024
DESCRIPTION = """
Ages the faces in photos with a Glow normalizing flow.

* **Photos**: upload as `multipart/form-data` with the photo in the field `image`: JPEG, PNG (also with
  transparency, palette or 16-bit), WebP, grayscale, CMYK, or HEIC/HEIF from phones. EXIF orientation is
  applied, and results come back upright, the same size as the upload.
* **Results**: an image file with details in `X-` headers, or JSON with the image in base64 when the request
  sends `Accept: application/json`.
* **Errors**: always JSON, `{"error": {"code": "...", "message": "..."}}`; the message is written for people.
* **Keys**: when the service runs with API keys, every `/v1` route and `/metrics` need
  `Authorization: Bearer <key>`; without it the answer is 401 before any of the upload is read.
* **Limits**: at most `MAX_FACES` faces are edited per request, largest first, within a work budget (faces x
  ages x pixels); every face found and not edited is reported with its reason (`skipped`, `X-Faces-Skipped`).
"""


def _load_in_background(service: Service) -> None:
    try:
        service.editor = load_editor(service.settings)
    except Exception as exc:  # the service stays up, and /readyz answers 503 model_unavailable
        service.load_error = f"{type(exc).__name__}: {exc}"
        log.error("the model could not be loaded: %s", service.load_error)
        return
    service.metrics.model_ready.set(1)
    log.info("model loaded from %s on %s", service.settings.weights_dir, service.editor.device)


def _operation_id(route: APIRoute) -> str:
    """Operation ids are the route names, so that generated clients get readable method names."""
    return route.name


def model_thread() -> None:
    """What each thread that runs the model sets first: denormal floats flushed to zero (a per-thread CPU
    setting; the flow's arithmetic meets denormals, which the CPU handles many times slower, and the answer
    does not change by more than a float's last bits)."""
    torch.set_flush_denormal(True)


def create_app(
    settings: Settings | None = None, editor: AgeEditor | None = None, *, set_torch_threads: bool = False
) -> FastAPI:
    """The service. `editor`: an already loaded editor to serve instead of loading WEIGHTS_DIR.
    `set_torch_threads`: on start, set the process's torch threads to `settings.threads_per_edit()`. The served
    `app` below does, as its process is the server's; apps built inside another program (the tests) leave that
    program's threads as they are."""
    settings = settings or Settings.from_env()
    set_decompression_limit(settings.max_pixels)
    # Starlette spools uploads above 1 MB to a temporary file; with this they stay in memory
    MultiPartParser.spool_max_size = max(
        MultiPartParser.spool_max_size, settings.max_upload_bytes + FORM_OVERHEAD_BYTES
    )
    service = Service(
        settings=settings,
        gate=InferenceGate(settings.max_concurrency, settings.max_queue, prepare=model_thread),
        metrics=Metrics(),
        editor=editor,
    )
    service.metrics.in_flight.set_function(lambda: service.gate.admitted)
    service.metrics.model_ready.set(editor is not None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if set_torch_threads:
            torch.set_num_threads(settings.threads_per_edit())
        # requests waiting at the gate hold a worker thread: leave enough for the queue and the rest
        limiter = anyio.to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, settings.max_concurrency + settings.max_queue + 8)
        loading = None if service.editor else asyncio.create_task(asyncio.to_thread(_load_in_background, service))
        yield
        if loading:
            loading.cancel()

    # /docs and /redoc are served below from the files of a pinned package, not from a CDN
    app = FastAPI(
        title="Face age API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.service = service
    install_error_handlers(app)
    app.add_middleware(CatchAllMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_upload_bytes + FORM_OVERHEAD_BYTES,
        message=upload_too_large_message(settings.max_upload_bytes),
        max_uploading_bytes=settings.max_uploading_bytes,
        idle_timeout=settings.body_idle_timeout,
        timeout=settings.body_timeout,
        retry_after=RETRY_AFTER_SECONDS,
    )
    app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)  # outside the body limits: no body is read
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    app.add_middleware(SecurityHeadersMiddleware)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
            expose_headers=[*edits.AGE_HEADERS, *edits.SERIES_HEADERS, "X-Seed", "Retry-After"],
        )
    for routes in (edits, analysis, model_info, probes):
        app.include_router(routes.router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.mount("/docs-assets", StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")

    @app.get("/", include_in_schema=False)
    async def web_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> FileResponse:
        return FileResponse(STATIC_DIR / "docs.html")

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> FileResponse:
        return FileResponse(STATIC_DIR / "redoc.html")

    return app


app = create_app(set_torch_threads=True)
