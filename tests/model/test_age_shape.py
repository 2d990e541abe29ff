"""model.age_shape: mean faces of each age registered to the reference age's give a smooth warp that moves a
face's own pixels to the shape of the age reached; nothing moves at the paste mask's edge, and a zero edit
stays exact."""

import json

import numpy as np
import pytest
import torch

import model.age_shape as age_shape
from model.age_shape import SHAPE_FILE, SHAPE_KEY, AgeShape, fit_shape, main
from model.data import FaceSet
from model.editor import AgeEditor, FaceEdit
from model.masks import face_mask

FRAMING = "tight"
KNOTS = (0.0, 30.0, 90.0)


def moving_mouth_faces(n: int = 300, seed: int = 0) -> FaceSet:
    """64 px stand-ins whose dark 'mouth', a soft horizontal bar, sits lower the older the face (row 34 at
    birth, 42 at 90)."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(0, 90, n).astype(np.float32)
    rows = np.arange(64, dtype=np.float32)[None, :, None]
    centres = (34 + ages * 8 / 90)[:, None, None]
    bar = np.exp(-0.5 * ((rows - centres) / 1.5) ** 2) * (np.abs(np.arange(64) - 32) < 14)[None, None, :]
    images = 170.0 - 90.0 * bar[..., None] + rng.normal(0, 2, (n, 64, 64, 1))
    images = np.repeat(images, 3, axis=3)
    return FaceSet(
        images=images.clip(0, 255).astype(np.uint8), ages=ages, genders=["female"] * n, races=[None] * n, files=[""] * n
    )


def mouth_row(crops: torch.Tensor) -> torch.Tensor:
    """The darkness-weighted mean row of the middle columns, per crop."""
    darkness = (1 - crops.mean(1))[:, 20:60, 24:40].clamp(min=0) ** 4
    rows = torch.arange(20, 60, dtype=torch.float32)[None, :, None]
    return (darkness * rows).sum((1, 2)) / darkness.sum((1, 2))


@pytest.fixture(scope="module")
def fitted() -> AgeShape:
    faces = moving_mouth_faces()
    original = age_shape.STEPS
    age_shape.STEPS = 60
    try:
        return fit_shape(faces, gain=1.0, framing=FRAMING, knots=KNOTS)
    finally:
        age_shape.STEPS = original


def test_the_fitted_warp_moves_a_young_face_s_mouth_down_to_an_old_face_s(fitted):
    faces = moving_mouth_faces(40, seed=1)
    young = faces.batch(np.flatnonzero(faces.ages < 15))
    old_row = float(mouth_row(faces.batch(np.flatnonzero(faces.ages > 75))).mean())
    young_row = float(mouth_row(young).mean())
    aged = fitted.warp(young, np.full(len(young), 5.0), np.full(len(young), 85.0))
    moved = float(mouth_row(aged).mean())
    # the mouth moved down toward where old faces have it, not past it: the smooth fit of blurred means is
    # shallower than the faces' own change (what the gain is for)
    assert young_row + 2 < moved < old_row
    # and back: an old face taken young has its mouth higher
    old = faces.batch(np.flatnonzero(faces.ages > 75))
    rejuvenated = fitted.warp(old, np.full(len(old), 85.0), np.full(len(old), 5.0))
    assert young_row < float(mouth_row(rejuvenated).mean()) < old_row - 2


def test_nothing_moves_at_the_mask_edge_and_a_zero_edit_is_exact(fitted):
    crops = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    offset = fitted.displacement([5.0, 40.0], [85.0, 10.0], 64)
    edge = face_mask(64, FRAMING) == 0
    assert offset.abs().amax(-1)[:, edge].max() == 0
    assert offset.abs().max() > 0.02  # it does move the face inside
    same = fitted.warp(crops, [30.0, 50.0, 7.0], [30.0, 50.0, 7.0])
    assert torch.equal(same, crops)
    mixed = fitted.warp(crops, [30.0, 50.0, 7.0], [60.0, 50.0, 7.0])
    assert torch.equal(mixed[1:], crops[1:]) and not torch.equal(mixed[0], crops[0])
    # a twice-stronger gain moves twice as far
    double = AgeShape(fitted.knots, fitted.fields, 2 * fitted.gain, FRAMING)
    assert torch.allclose(double.displacement([5.0], [85.0], 64), 2 * fitted.displacement([5.0], [85.0], 64))


def test_the_editor_gives_its_change_the_shape_of_the_age_reached(fitted):
    editor = AgeEditor.__new__(AgeEditor)
    editor.age_shape = fitted
    crops = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    change = 0.01 * torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    edits = [
        FaceEdit(before=crops[0], after=crops[0], age_before=10.0, age_after=60.0),
        FaceEdit(before=crops[1], after=crops[1], age_before=40.0, age_after=40.0),
    ]
    shaped = editor.shaped_change(crops, edits, change)
    assert torch.allclose(shaped[0], fitted.warp(crops[:1] + change[:1], [10.0], [60.0])[0] - crops[0])
    assert torch.equal(shaped[1], change[1])  # no change of age: the change as it was
    editor.age_shape = None
    assert torch.equal(editor.shaped_change(crops, edits, change), change)


def test_the_command_writes_the_fields_and_they_load(tmp_path, monkeypatch):
    faces = moving_mouth_faces(120)
    monkeypatch.setattr("model.data.load_faces", lambda *a, **k: faces)
    monkeypatch.setattr(age_shape, "STEPS", 5)
    monkeypatch.setattr(age_shape, "KNOTS", KNOTS)
    (tmp_path / "editor.json").write_text(json.dumps({"model": {"framing": FRAMING}}))
    (tmp_path / "report.json").write_text(json.dumps({"framing": FRAMING}))
    main(["--weights", str(tmp_path), "--data", str(tmp_path), "--gain", "1.5"])
    settings = json.loads((tmp_path / "editor.json").read_text())
    assert settings["model"] == {"framing": FRAMING}  # the rest of editor.json is kept
    assert settings[SHAPE_KEY]["gain"] == 1.5 and settings[SHAPE_KEY]["knots"] == list(KNOTS)
    assert (tmp_path / SHAPE_FILE).exists()
    loaded = AgeShape.load(tmp_path, settings[SHAPE_KEY])
    assert loaded.fields.shape == (len(KNOTS), 2, age_shape.GRID, age_shape.GRID)
    assert torch.equal(loaded.fields[KNOTS.index(30.0)], torch.zeros(2, age_shape.GRID, age_shape.GRID))


def test_the_service_warps_only_the_faces_and_a_zero_edit_gives_the_photo_back(fitted, photo):
    from tests.model.test_shipped_model import WEIGHTS

    editor = AgeEditor.from_dir(WEIGHTS)
    image = photo("fr_obama.jpg")
    plain = editor.age_photo(image, years=30).image
    editor.age_shape = AgeShape(fitted.knots, fitted.fields, 3.0, editor.framing)
    shaped = editor.age_photo(image, years=30).image
    assert np.array_equal(editor.age_photo(image, years=0).image, image)
    differs = np.abs(shaped.astype(int) - plain.astype(int)).max(2) > 2
    assert differs.any()
    rows, cols = np.nonzero(differs)
    face = editor.find_faces(image)[0].box  # x0, y0, x1, y1
    width, height = face[2] - face[0], face[3] - face[1]
    assert face[0] - width <= cols.min() and cols.max() <= face[2] + width
    assert face[1] - height <= rows.min() and rows.max() <= face[3] + height
