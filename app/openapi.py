"""What /docs shows of the answers: every error code with an example message, and images as files."""

from __future__ import annotations

from app.auth import UNAUTHORIZED
from app.dependencies import MODEL_LOADING, MODEL_UNAVAILABLE
from app.imaging import OUTPUT_FORMATS
from app.schemas import ErrorResponse

_ERROR_EXAMPLES = {
    400: {
        "corrupt_image": "The photo is damaged or incomplete and cannot be read.",
        "bad_request": "There was an error parsing the body",
    },
    401: {"unauthorized": UNAUTHORIZED},
    408: {"upload_timeout": "The upload stalled or took too long and was closed. Send it again."},
    413: {
        "upload_too_large": "The upload is larger than the limit of 20.0 MB.",
        "too_many_pixels": "The photo has 12000 x 9000 pixels (108 megapixels); the limit is 40 megapixels. "
        "Send a smaller photo.",
    },
    415: {"unsupported_image": "GIF files are not supported. Send a JPEG, PNG, WebP or HEIC photo."},
    422: {
        "no_face": "No face was found in the photo. Use a photo where a face is clearly visible.",
        "face_too_small": "The face is too small (28 px; at least 40 px are needed). Use a closer or larger photo.",
        "invalid_parameters": "Give exactly one of years and target_age: years to add, or the age to take "
        "the faces to.",
        "target_age_out_of_range": "The target age 95 is outside the model's range of 1 to 90 years.",
        "output_too_large": "The result is 20000 x 3000 pixels, more than WEBP can hold (16383 pixels a "
        "side). Ask for png instead.",
    },
    503: {
        "busy": "The service is busy. Try again in a few seconds.",
        "uploads_busy": "The service is receiving too many uploads at once. Try again in a few seconds.",
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
