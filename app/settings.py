"""Every setting of the service, read from environment variables in one place."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from model.editor import EditLimits


class SettingsError(ValueError):
    """An environment variable with a value the service cannot use."""


def _integer(environ: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {value}")
    return value


def _switch(environ: Mapping[str, str], name: str, default: bool) -> bool:
    raw = environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "on", "true", "yes"):
        return True
    if raw in ("0", "off", "false", "no"):
        return False
    raise SettingsError(f"{name} must be on or off, got {raw!r}")


def checked_device(device: str) -> str:
    device = device.strip().lower() or "auto"
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        raise SettingsError(f"DEVICE must be auto, cpu or cuda, got {device!r}")
    return device


def _words(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(word.strip() for word in environ.get(name, "").split(",") if word.strip())


@dataclass(frozen=True)
class Settings:
    weights_dir: Path = Path("weights")
    max_upload_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    device: str = "auto"  # auto | cpu | cuda (or cuda:N)
    torch_threads: int = 0  # 0: the cores divided among the edits that run at once (threads_per_edit)
    # the weights folder's 128 px detail stage, where it has one; off: the fitted curve alone, with less CPU
    # per edit (docs/PERFORMANCE.md)
    detail_stage: bool = True
    max_concurrency: int = 2  # edits running at once
    max_queue: int = 32  # requests waiting for a slot before the service answers 503 (16 clients fit)
    api_keys: tuple[str, ...] = ()  # when set, /v1 routes need `Authorization: Bearer <key>`
    cors_origins: tuple[str, ...] = ()
    min_face_size: int = 24  # faces smaller than this many photo pixels are not edited (and reported)
    detect_max_side: int = 640  # larger photos are searched for faces on a copy this size
    detect_second_pass_side: int = 1600  # ...and again on one this size when that finds nothing or small faces
    max_faces: int = 16  # faces edited per request, largest first; the others are reported as skipped
    work_budget_megapixels: int = 64  # faces x ages x pixels each face's paste covers, per request
    max_uploading_bytes: int = 96 * 1024 * 1024  # bytes held by all uploads not yet answered, together
    body_idle_timeout: int = 15  # seconds an upload may pause before it is closed with 408
    body_timeout: int = 120  # seconds an upload may take in all
    # the HTTP server (app.serve): limits that hold before a request reaches the app
    max_header_bytes: int = 32 * 1024  # request line and headers together
    header_timeout: int = 10  # seconds from a connection's (or a request's) first byte to its complete headers
    keep_alive_timeout: int = 5  # seconds an idle connection stays open after a response
    max_connections: int = 256  # open connections; beyond them new ones are closed at once

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        environ = os.environ if environ is None else environ
        return cls(
            weights_dir=Path(environ.get("WEIGHTS_DIR", "").strip() or cls.weights_dir),
            max_upload_bytes=_integer(environ, "MAX_UPLOAD_BYTES", cls.max_upload_bytes, 1),
            max_pixels=_integer(environ, "MAX_PIXELS", cls.max_pixels, 1),
            device=checked_device(environ.get("DEVICE", "auto")),
            torch_threads=_integer(environ, "TORCH_THREADS", cls.torch_threads, 0),
            detail_stage=_switch(environ, "DETAIL_STAGE", cls.detail_stage),
            max_concurrency=_integer(environ, "MAX_CONCURRENCY", cls.max_concurrency, 1),
            max_queue=_integer(environ, "MAX_QUEUE", cls.max_queue, 0),
            api_keys=_words(environ, "API_KEYS"),
            cors_origins=_words(environ, "CORS_ORIGINS"),
            min_face_size=_integer(environ, "MIN_FACE_SIZE", cls.min_face_size, 1),
            detect_max_side=_integer(environ, "DETECT_MAX_SIDE", cls.detect_max_side, 64),
            detect_second_pass_side=_integer(environ, "DETECT_SECOND_PASS_SIDE", cls.detect_second_pass_side, 0),
            max_faces=_integer(environ, "MAX_FACES", cls.max_faces, 1),
            work_budget_megapixels=_integer(environ, "WORK_BUDGET_MEGAPIXELS", cls.work_budget_megapixels, 1),
            max_uploading_bytes=_integer(environ, "MAX_UPLOADING_BYTES", cls.max_uploading_bytes, 1),
            body_idle_timeout=_integer(environ, "BODY_IDLE_TIMEOUT", cls.body_idle_timeout, 1),
            body_timeout=_integer(environ, "BODY_TIMEOUT", cls.body_timeout, 1),
            max_header_bytes=_integer(environ, "MAX_HEADER_BYTES", cls.max_header_bytes, 1024),
            header_timeout=_integer(environ, "HEADER_TIMEOUT", cls.header_timeout, 1),
            keep_alive_timeout=_integer(environ, "KEEP_ALIVE_TIMEOUT", cls.keep_alive_timeout, 1),
            max_connections=_integer(environ, "MAX_CONNECTIONS", cls.max_connections, 1),
        )

    def edit_limits(self) -> EditLimits:
        return EditLimits(max_faces=self.max_faces, work_pixels=self.work_budget_megapixels * 1_000_000)

    def threads_per_edit(self) -> int:
        """TORCH_THREADS, or the cores divided among the MAX_CONCURRENCY edits that run at once: edits that
        together ask for more threads than there are cores spend most of their time waiting on each other."""
        return self.torch_threads or max(1, len(os.sched_getaffinity(0)) // self.max_concurrency)

    def torch_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)
