"""Photos in and images out, as the routes share them: the upload decoded within the limits, and an image
answered as a file or described in JSON."""

from __future__ import annotations

import base64

import numpy as np
from fastapi import Request, Response

from app.imaging import OUTPUT_FORMATS, DecodedImage, decode_image
from app.schemas import EncodedImage, PhotoForm
from app.service import Service

MULTIPART = "multipart/form-data"


def wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "")


def decode_upload(service: Service, form: PhotoForm) -> DecodedImage:
    settings = service.settings
    return decode_image(form.image.file.read(), settings.max_upload_bytes, settings.max_pixels)


def describe(encoded: bytes, image: np.ndarray, format_name: str) -> EncodedImage:
    height, width = image.shape[:2]
    return EncodedImage(
        media_type=OUTPUT_FORMATS[format_name].media_type,
        width=width,
        height=height,
        data=base64.b64encode(encoded).decode("ascii"),
    )


def image_file(encoded: bytes, format_name: str, headers: dict[str, str]) -> Response:
    return Response(encoded, media_type=OUTPUT_FORMATS[format_name].media_type, headers=headers)
