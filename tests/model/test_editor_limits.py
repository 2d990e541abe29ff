"""model.editor's limits on what it edits: detections the flow finds implausible as faces are skipped, real
faces are not, and the result canvas keeps within its pixel limit."""

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from model.align import DetectedFace
from model.editor import result_canvas


@pytest.fixture(scope="module")
def portrait_with_a_dark_blur(photo):
    """A portrait beside a blurred dark object on a light wall, and a detection of the object as a face (the
    real face's landmarks moved onto it), as the detector gives for such backgrounds."""
    portrait = photo("frrepo_obama_small.jpg")
    wall = Image.new("RGB", (320, 240), (205, 195, 180))
    ImageDraw.Draw(wall).ellipse((110, 40, 210, 200), fill=(35, 30, 25))
    image = np.concatenate([portrait, np.asarray(wall.filter(ImageFilter.GaussianBlur(14)))], axis=1)
    return image


def test_a_detection_the_flow_finds_implausible_as_a_face_is_skipped(
    age_editor, portrait_with_a_dark_blur, monkeypatch
):
    (real,) = age_editor.aligner.detect(portrait_with_a_dark_blur[:, :320])
    offset = np.array([480.0, 120.0]) - real.landmarks.mean(0)
    false = DetectedFace(box=real.box + np.r_[offset, offset], landmarks=real.landmarks + offset, score=0.95)
    monkeypatch.setattr(age_editor.aligner, "detect", lambda image, smallest=20.0: [real, false])
    result = age_editor.age_photo(portrait_with_a_dark_blur, years=30)
    assert len(result.faces) == 1 and result.faces[0].face is real
    assert [s.reason for s in result.skipped] == ["not_a_face"] and result.skipped[0].face is false
    assert np.array_equal(result.image[:, 320:], portrait_with_a_dark_blur[:, 320:])


def test_real_faces_of_the_fixtures_lie_within_the_plausible_range(age_editor, photo):
    low, high = age_editor.plausible_bits_per_dim
    for name in ("fr_obama.jpg", "frrepo_two_people.jpg", "skimage_astronaut.png", "skimage_camera.png"):
        image = photo(name)
        plan = age_editor.plan_faces(image)
        assert plan.skipped == [] and len(plan.aligned) >= 1, name


def test_without_the_range_in_editor_json_every_detection_is_edited(age_editor, monkeypatch):
    monkeypatch.setattr(age_editor, "settings", {})
    assert age_editor.plausible_bits_per_dim is None


def test_result_canvas_shrinks_to_the_pixel_limit_keeping_the_aspect_ratio():
    canvas, to_photo = result_canvas(np.zeros((300, 600, 3), np.uint8), 20_000)
    assert canvas.shape[0] * canvas.shape[1] <= 20_000 and canvas.shape[1] == 2 * canvas.shape[0]
    assert to_photo[0, 0] == pytest.approx(600 / canvas.shape[1])
