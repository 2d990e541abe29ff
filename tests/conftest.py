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
