"""Decoding uploaded photos safely and encoding results.

Limits are checked on the header, before any pixel is decoded. Every photo comes out upright (EXIF
orientation applied) as H x W x 3 uint8 RGB, with its alpha channel kept aside when it has one.
"""

from __future__ import annotations

import io
import math
import struct
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

pillow_heif.register_heif_opener()

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "HEIF")
SUPPORTED_NAMES = "JPEG, PNG, WebP or HEIC"
JPEG_QUALITY = 92
# what Pillow's decoders raise on damaged data
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)
# formats that are recognised only to say that they are not supported
_KNOWN_SIGNATURES = ((b"GIF8", "GIF"), (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"%PDF", "PDF"))
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_RGB_PROFILE_MODES = ("RGB", "RGBA", "P", "PA")
DAMAGED_OR_INCOMPLETE = "The photo is damaged or incomplete and cannot be read."


class ImageError(ValueError):
    """An upload that cannot be used, with a message meant for the person who sent it."""

    status_code = 400
    code = "bad_image"


class UploadTooLarge(ImageError):
    status_code = 413
    code = "upload_too_large"


class TooManyPixels(ImageError):
    status_code = 413
    code = "too_many_pixels"


class UnsupportedImage(ImageError):
    status_code = 415
    code = "unsupported_image"


class CorruptImage(ImageError):
    status_code = 400
    code = "corrupt_image"


class OutputTooLarge(ImageError):
    status_code = 422
    code = "output_too_large"


@dataclass(frozen=True)
class OutputFormat:
    pil_name: str
    media_type: str
    extension: str
    max_side: int
    keeps_alpha: bool


OUTPUT_FORMATS = {
    "jpeg": OutputFormat("JPEG", "image/jpeg", ".jpg", 65_500, keeps_alpha=False),
    "png": OutputFormat("PNG", "image/png", ".png", 2**31 - 1, keeps_alpha=True),
    "webp": OutputFormat("WEBP", "image/webp", ".webp", 16_383, keeps_alpha=True),
}


_pillow_pixel_limit = 0


@dataclass
class DecodedImage:
    rgb: np.ndarray  # H x W x 3 uint8, upright
    alpha: np.ndarray | None  # H x W uint8 when the upload had an alpha channel
    source_format: str  # JPEG (MPO for some phone JPEGs), PNG, WEBP or HEIF
    icc_profile: bytes | None  # kept so that wide-gamut phone photos keep their colours


def megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1024 / 1024:.1f} MB"


def set_decompression_limit(max_pixels: int) -> None:
    """Make Pillow's own decompression-bomb check (it raises at twice this limit) back up ours.

    Pillow's limit is global: with several services in one process it follows the most generous one.
    """
    global _pillow_pixel_limit
    _pillow_pixel_limit = max(_pillow_pixel_limit, max_pixels)
    Image.MAX_IMAGE_PIXELS = _pillow_pixel_limit


def unsupported_format_message(name: str) -> str:
    return f"{name} files are not supported. Send a {SUPPORTED_NAMES} photo."


def _unsupported_message(data: bytes) -> str:
    for signature, name in _KNOWN_SIGNATURES:
        if data.startswith(signature):
            return unsupported_format_message(name)
    return f"The file is not a photo in a supported format. Send a {SUPPORTED_NAMES} photo."


def too_many_pixels_message(width: int, height: int, max_pixels: int) -> str:
    return (
        f"The photo has {width} x {height} pixels ({width * height / 1e6:.0f} megapixels); "
        f"the limit is {max_pixels / 1e6:.0f} megapixels. Send a smaller photo."
    )


def output_too_large_message(width: int, height: int, format_name: str) -> str:
    return (
        f"The result is {width} x {height} pixels, more than {format_name.upper()} can hold "
        f"({OUTPUT_FORMATS[format_name].max_side} pixels a side). Ask for png instead."
    )


def _rgb_and_alpha(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    if image.mode in _SIXTEEN_BIT_MODES:
        gray = np.clip(np.rint(np.asarray(image, dtype=np.float32) / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2), None
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = np.asarray(image.convert("RGBA"))
        return np.ascontiguousarray(rgba[:, :, :3]), np.ascontiguousarray(rgba[:, :, 3])
    return np.asarray(image.convert("RGB")), None


def decode_image(data: bytes, max_bytes: int, max_pixels: int) -> DecodedImage:
    """Bytes of an uploaded photo -> upright RGB pixels. Raises an ImageError that says what is wrong."""
    if not data:
        raise CorruptImage("The upload is empty. Send a photo.")
    if len(data) > max_bytes:
        raise UploadTooLarge(f"The photo is {megabytes(len(data))}; the limit is {megabytes(max_bytes)}.")
    try:
        image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except Image.DecompressionBombError:
        raise TooManyPixels(
            f"The photo has too many pixels; the limit is {max_pixels / 1e6:.0f} megapixels. Send a smaller photo."
        ) from None
    except UnidentifiedImageError:
        raise UnsupportedImage(_unsupported_message(data)) from None
    except DECODE_ERRORS:
        raise CorruptImage("The photo is damaged and cannot be read.") from None
    width, height = image.size
    if width * height > max_pixels:
        raise TooManyPixels(too_many_pixels_message(width, height, max_pixels))
    if width == 0 or height == 0:
        raise CorruptImage("The photo has no pixels.")
    source_format = image.format
    icc_profile = image.info.get("icc_profile") if image.mode in _RGB_PROFILE_MODES else None
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)
        rgb, alpha = _rgb_and_alpha(upright)
    except DECODE_ERRORS:
        raise CorruptImage(DAMAGED_OR_INCOMPLETE) from None
    return DecodedImage(rgb=rgb, alpha=alpha, source_format=source_format or "", icc_profile=icc_profile or None)


def encode_image(
    rgb: np.ndarray, format_name: str, alpha: np.ndarray | None = None, icc_profile: bytes | None = None
) -> bytes:
    """H x W x 3 uint8 -> file bytes; `alpha` (H x W) is kept where the format can hold it."""
    output = OUTPUT_FORMATS[format_name]
    height, width = rgb.shape[:2]
    if max(height, width) > output.max_side:
        raise OutputTooLarge(output_too_large_message(width, height, format_name))
    if alpha is not None and output.keeps_alpha:
        image = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    else:
        image = Image.fromarray(rgb, "RGB")
    options: dict = {"icc_profile": icc_profile} if icc_profile else {}
    if output.pil_name in ("JPEG", "WEBP"):
        options["quality"] = JPEG_QUALITY
    buffer = io.BytesIO()
    image.save(buffer, format=output.pil_name, **options)
    return buffer.getvalue()


def tensor_to_image(face) -> np.ndarray:
    """A 3 x S x S tensor in [0, 1] -> S x S x 3 uint8."""
    return face.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def label_band_height(width: int, height: int) -> int:
    return max(18, min(width, height) // 8)


def labelled_strip(frames: list[np.ndarray], labels: list[str]) -> np.ndarray:
    """Equal-sized H x W x 3 frames side by side, each with its label centred in a white band beneath it."""
    height, width = frames[0].shape[:2]
    band = label_band_height(width, height)
    strip = Image.new("RGB", (width * len(frames), height + band), "white")
    draw = ImageDraw.Draw(strip)
    font = ImageFont.load_default(size=round(band * 0.6))
    for index, (frame, label) in enumerate(zip(frames, labels)):
        strip.paste(Image.fromarray(frame), (index * width, 0))
        draw.text((index * width + width / 2, height + band / 2), label, fill=(29, 36, 48), font=font, anchor="mm")
    return np.asarray(strip)


def grid(images: list[np.ndarray], columns: int) -> np.ndarray:
    """Equal-sized H x W x 3 images in rows of `columns`, left to right, top to bottom; gaps stay black."""
    height, width = images[0].shape[:2]
    rows = math.ceil(len(images) / columns)
    canvas = np.zeros((rows * height, min(columns, len(images)) * width, 3), np.uint8)
    for index, image in enumerate(images):
        row, column = divmod(index, columns)
        canvas[row * height : (row + 1) * height, column * width : (column + 1) * width] = image
    return canvas
