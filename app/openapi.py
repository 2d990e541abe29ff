"""What /docs shows of the answers: every error code with an example message, and images as files."""

from __future__ import annotations

from app.auth import UNAUTHORIZED
from app.body_limit import BODY_TIMEOUT, UPLOADS_BUSY, upload_too_large_message
from app.dependencies import MODEL_LOADING, MODEL_UNAVAILABLE
from app.errors import BUSY
from app.imaging import (
    DAMAGED_OR_INCOMPLETE,
    OUTPUT_FORMATS,
    output_too_large_message,
    too_many_pixels_message,
    unsupported_format_message,
)
from app.schemas import ErrorResponse
from model.edit_rules import NO_FACE, ONE_KIND_OF_EDIT, face_too_small_message, target_age_message

# each message as the service writes it, with example values where it has some
_ERROR_EXAMPLES = {
    400: {
        "corrupt_image": DAMAGED_OR_INCOMPLETE,
        "bad_request": "There was an error parsing the body",
    },
    401: {"unauthorized": UNAUTHORIZED},
    408: {"upload_timeout": BODY_TIMEOUT},
    413: {
        "upload_too_large": upload_too_large_message(20 * 1024 * 1024),
        "too_many_pixels": too_many_pixels_message(12000, 9000, 40_000_000),
    },
    415: {"unsupported_image": unsupported_format_message("GIF")},
    422: {
        "no_face": NO_FACE,
        "face_too_small": face_too_small_message(28, 40),
        "invalid_parameters": ONE_KIND_OF_EDIT,
        "target_age_out_of_range": target_age_message(95, (1, 90)),
        "output_too_large": output_too_large_message(20000, 3000, "webp"),
    },
    503: {
        "busy": BUSY,
        "uploads_busy": UPLOADS_BUSY,
        "model_loading": MODEL_LOADING,
        "model_unavailable": MODEL_UNAVAILABLE,
    },
}
_ERROR_DESCRIPTIONS = {
    400: "The photo or the request body cannot be read.",
    401: "API keys are configured and the request has no valid `Authorization: Bearer <key>` (answered before "
    "the body is read).",
    408: "The upload paused longer than BODY_IDLE_TIMEOUT or took longer than BODY_TIMEOUT.",
    413: "The upload has too many bytes or the photo too many pixels (both checked before decoding).",
    415: "The file is not a JPEG, PNG, WebP or HEIC image.",
    422: "A parameter is invalid, no usable face was found, or the result cannot be encoded as asked.",
    503: "Every model slot is busy and the queue is full, or uploads in progress hold MAX_UPLOADING_BYTES (see "
    "`Retry-After`), or the model is still loading.",
}


def error_responses(*status_codes: int) -> dict:
    return {
        status: {
            "model": ErrorResponse,
            "description": _ERROR_DESCRIPTIONS[status],
            "content": {
                "application/json": {
                    "examples": {
                        code: {"value": {"error": {"code": code, "message": message}}}
                        for code, message in _ERROR_EXAMPLES[status].items()
                    }
                }
            },
        }
        for status in status_codes
    }


def image_responses(description: str, headers: dict[str, str]) -> dict:
    """The 200 response as an image file; FastAPI adds the JSON body from the response model beside it."""
    return {
        200: {
            "description": description + " An image file, or JSON with base64 under `Accept: application/json`.",
            "content": {
                f.media_type: {"schema": {"type": "string", "format": "binary"}} for f in OUTPUT_FORMATS.values()
            },
            "headers": {name: {"description": text, "schema": {"type": "string"}} for name, text in headers.items()},
        }
    }
