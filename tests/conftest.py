"""Shared test settings and fixtures. The tests run beside long training jobs: one thread, no denormals."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)
torch.set_flush_denormal(True)

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def photo():
    """Loads a fixture photo as an H x W x 3 uint8 array (any file mode converted to RGB)."""

    def load(name: str) -> np.ndarray:
        with Image.open(FIXTURES / name) as im:
            return np.asarray(im.convert("RGB"))

    return load


@pytest.fixture(scope="session")
def aligner():
    from model.align import FaceAligner

    return FaceAligner()


@pytest.fixture(scope="session")
def age_editor():
    """The shipped model (WEIGHTS_DIR, default weights/), loaded once: the detector alone takes seconds."""
    from app.service import load_editor
    from app.settings import Settings

    settings = Settings.from_env()
    if not (settings.weights_dir / "flow.safetensors").is_file():
        pytest.skip(f"no trained model in {settings.weights_dir}/ (flow.safetensors)")
    return load_editor(settings)


@pytest.fixture(scope="session")
def fake_editor(aligner):
    """The editor's interface with the real detector and no flow (tests/fakes.py), for tests of what the
    service does with its answers: they run with or without weights/."""
    from tests.fakes import FakeEditor

    return FakeEditor(aligner)


@pytest.fixture(scope="module")
def server_url(fake_editor):
    """The service with the fake editor, served over HTTP on a free loopback port."""
    import socket
    import threading
    import time

    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(Settings(), editor=fake_editor), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    listener.close()


@pytest.fixture(scope="session")
def upload_files(photo) -> dict[str, bytes]:
    """Files as phones, editors and attackers send them, made at run time from the fixture photos."""
    import io
    import struct
    import zlib

    import pillow_heif

    def saved(image: Image.Image, format_name: str, **options) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format=format_name, **options)
        return buffer.getvalue()

    def png_chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    def png_header_only(width: int, height: int) -> bytes:
        """A valid PNG header claiming width x height pixels, with almost no pixel data."""
        header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
            + png_chunk(b"IEND", b"")
        )

    portrait = Image.fromarray(photo("frrepo_obama_small.jpg"))
    jpeg = (FIXTURES / "frrepo_obama_small.jpg").read_bytes()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    sixteen_bit = (np.asarray(portrait.convert("L"), np.uint16) * 257).astype(np.uint16)
    pillow_heif.register_heif_opener()
    return {
        "jpeg": jpeg,
        "truncated_jpeg": jpeg[: len(jpeg) // 2],
        "random_bytes": np.random.default_rng(0).integers(0, 256, 50_000, dtype=np.uint8).tobytes(),
        "text": b"name,age\nalice,34\nbob,71\n" * 100,
        "png_bomb": png_header_only(100_000, 100_000),
        "gif": saved(portrait, "GIF"),
        "bmp": saved(portrait, "BMP"),
        "cmyk_jpeg": saved(portrait.convert("CMYK"), "JPEG", quality=95),
        "png16": saved(Image.fromarray(sixteen_bit), "PNG"),
        "palette_png": saved(portrait.convert("P", palette=Image.Palette.ADAPTIVE, colors=256), "PNG"),
        "grayscale_png": saved(portrait.convert("L"), "PNG"),
        "webp": saved(portrait, "WEBP", quality=95),
        "heic": saved(portrait, "HEIF", quality=95),
        "mpo": saved(portrait, "MPO", save_all=True, append_images=[portrait.rotate(5)]),
        "exif_rotated_jpeg": saved(
            portrait.transpose(Image.Transpose.ROTATE_90), "JPEG", quality=95, exif=exif.tobytes()
        ),
    }
