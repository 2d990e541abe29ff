"""What the running service holds: its settings, the editor once loaded, the inference gate and metrics."""

from __future__ import annotations

from dataclasses import dataclass

from app.gate import InferenceGate
from app.metrics import Metrics
from app.settings import Settings
from model.align import FaceAligner
from model.checkpoint import CONFIG, WEIGHTS
from model.editor import AgeEditor


def load_editor(settings: Settings) -> AgeEditor:
    """The editor from WEIGHTS_DIR on the chosen device, with the face detector configured by the settings."""
    for name in (CONFIG, WEIGHTS):
        if not (settings.weights_dir / name).is_file():  # fail before the detector takes seconds to load
            raise FileNotFoundError(f"{settings.weights_dir / name} is missing")
    device = settings.torch_device()
    aligner = FaceAligner(
        detect_max_side=settings.detect_max_side,
        min_face_size=settings.min_face_size,
        second_pass_side=settings.detect_second_pass_side,
        device=device,
    )
    editor = AgeEditor.from_dir(settings.weights_dir, device, aligner=aligner)
    if not settings.detail_stage:
        editor.detail_stage = None
    return editor


@dataclass
class Service:
    settings: Settings
    gate: InferenceGate
    metrics: Metrics
    editor: AgeEditor | None = None
    load_error: str | None = None  # set when loading failed: /readyz then answers model_unavailable
