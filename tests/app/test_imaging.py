"""Decoding uploads (limits before pixels, every mode to upright RGB) and encoding results."""

import io

import numpy as np
import pytest
from PIL import Image

from app.imaging import (
    CorruptImage,
    OutputTooLarge,
    TooManyPixels,
    UnsupportedImage,
    UploadTooLarge,
    decode_image,
    encode_image,
    grid,
    set_decompression_limit,
)

MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 40_000_000


@pytest.fixture(autouse=True)
def pillow_limit():
    set_decompression_limit(MAX_PIXELS)


def decode(data: bytes, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS):
    return decode_image(data, max_bytes, max_pixels)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("name", ["jpeg", "cmyk_jpeg", "png16", "palette_png", "grayscale_png", "webp", "heic", "mpo"])
def test_supported_files_decode_to_upright_rgb(upload_files, name):
    decoded = decode(upload_files[name])
    assert decoded.rgb.shape == (240, 320, 3)
    assert decoded.rgb.dtype == np.uint8
    assert decoded.alpha is None


def test_sixteen_bit_png_is_scaled_not_clipped(upload_files, photo):
    gray = np.asarray(Image.fromarray(photo("frrepo_obama_small.jpg")).convert("L"))
    decoded = decode(upload_files["png16"])
    np.testing.assert_array_equal(decoded.rgb[:, :, 0], gray)


def test_cmyk_jpeg_keeps_its_colours(upload_files, photo):
    decoded = decode(upload_files["cmyk_jpeg"])
    difference = np.abs(decoded.rgb.astype(int) - photo("frrepo_obama_small.jpg").astype(int))
    assert difference.mean() < 6


def test_exif_orientation_is_applied(upload_files, photo):
    decoded = decode(upload_files["exif_rotated_jpeg"])
    assert decoded.rgb.shape == (240, 320, 3)
    difference = np.abs(decoded.rgb.astype(int) - photo("frrepo_obama_small.jpg").astype(int))
    assert difference.mean() < 6


def test_alpha_channel_is_kept_aside(fixtures_dir):
    original = np.asarray(Image.open(fixtures_dir / "fr_32bit_rgba.png"))
    decoded = decode((fixtures_dir / "fr_32bit_rgba.png").read_bytes())
    np.testing.assert_array_equal(decoded.alpha, original[:, :, 3])
    np.testing.assert_array_equal(decoded.rgb, original[:, :, :3])


def test_palette_transparency_becomes_alpha():
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 1)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", transparency=1)
    decoded = decode(buffer.getvalue())
    assert decoded.alpha[0, 0] == 0 and decoded.alpha[1, 1] == 255


def test_empty_upload_is_refused():
    with pytest.raises(CorruptImage, match="empty"):
        decode(b"")


def test_too_many_bytes_is_refused_before_decoding(upload_files):
    with pytest.raises(UploadTooLarge, match="limit"):
        decode(upload_files["jpeg"], max_bytes=1000)


def test_too_many_pixels_is_refused_from_the_header(upload_files):
    with pytest.raises(TooManyPixels, match="megapixels"):
        decode(upload_files["jpeg"], max_pixels=320 * 240 - 1)


def test_pillow_decompression_bomb_error_means_too_many_pixels(upload_files):
    with pytest.raises(TooManyPixels):
        decode(upload_files["png_bomb"], max_pixels=10**12)


def test_png_bomb_header_is_refused(upload_files):
    with pytest.raises(TooManyPixels):
        decode(upload_files["png_bomb"])


def test_truncated_jpeg_is_corrupt(upload_files):
    with pytest.raises(CorruptImage):
        decode(upload_files["truncated_jpeg"])


@pytest.mark.parametrize("name", ["random_bytes", "text"])
def test_non_images_are_unsupported(upload_files, name):
    with pytest.raises(UnsupportedImage, match="not a photo"):
        decode(upload_files[name])


@pytest.mark.parametrize("name, format_name", [("gif", "GIF"), ("bmp", "BMP")])
def test_unsupported_formats_are_named(upload_files, name, format_name):
    with pytest.raises(UnsupportedImage, match=f"{format_name} files are not supported"):
        decode(upload_files[name])


def test_damaged_png_is_corrupt():
    data = bytearray(png_bytes(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    data[100:400] = bytes(300)
    with pytest.raises(CorruptImage):
        decode(bytes(data))


def test_png_keeps_alpha_and_jpeg_drops_it():
    rgb = np.full((4, 6, 3), 200, np.uint8)
    alpha = np.tile(np.arange(0, 240, 40, dtype=np.uint8), (4, 1))
    as_png = Image.open(io.BytesIO(encode_image(rgb, "png", alpha)))
    as_jpeg = Image.open(io.BytesIO(encode_image(rgb, "jpeg", alpha)))
    assert as_png.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(as_png)[:, :, 3], alpha)
    assert as_jpeg.mode == "RGB"


def test_webp_larger_than_the_format_allows_is_refused():
    with pytest.raises(OutputTooLarge, match="png"):
        encode_image(np.zeros((2, 17_000, 3), np.uint8), "webp")


def test_grid_fills_rows_left_to_right():
    tiles = [np.full((2, 3, 3), value, np.uint8) for value in (10, 20, 30)]
    sheet = grid(tiles, columns=2)
    assert sheet.shape == (4, 6, 3)
    assert sheet[0, 0, 0] == 10 and sheet[0, 3, 0] == 20 and sheet[2, 0, 0] == 30 and sheet[2, 3, 0] == 0
