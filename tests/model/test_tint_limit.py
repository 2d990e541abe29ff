"""AgeEditor.untinted_change: an edit adds no tint of its own. At each pixel of the work crop the edited colour
is the photo's own colour there scaled by 0 to the tint limit's gain, plus at most its turn times that colour's
strength across it (model.colour.no_added_tint): a black-and-white photo comes back black and white, and the
brightness change is kept as it is."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from model.colour import LUMA
from model.editor import TINT_KEY, AgeEditor, FaceEdit
from model.guard import TINT_LIMIT, tint_setting
from tests.model.test_carried_details import path_tensors, small_flow

WEIGHTS = Path(os.environ.get("WEIGHTS_DIR", Path(__file__).parents[2] / "weights"))
SIDE = 32


def editor(gain: float | None, turn: float = 0.0) -> AgeEditor:
    from model.age import PosthocTrajectory

    flow = small_flow()
    settings: dict = {"model": {"framing": "tight"}}
    if gain is not None:
        settings[TINT_KEY] = {"max_gain": gain, "max_turn": turn}
    return AgeEditor(PosthocTrajectory(flow, path_tensors(flow), [0.5, 2.0], details="carried"), settings)


def edit(before: float, after: float) -> FaceEdit:
    face = torch.zeros(3, 8, 8)
    return FaceEdit(before=face, after=face, age_before=before, age_after=after)


def luma(images: torch.Tensor) -> torch.Tensor:
    return (images * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1)


def test_a_grey_crop_stays_grey_and_keeps_the_brightness_change():
    torch.manual_seed(0)
    crops = torch.rand(1, 1, SIDE, SIDE).expand(1, 3, SIDE, SIDE).clone() * 0.8 + 0.1
    change = 0.05 * torch.randn(1, 3, SIDE, SIDE)  # brightness and colour
    kept = editor(2.0, 0.5).untinted_change(crops, [edit(20, 50)], change)
    after = crops + kept
    assert (after.max(1).values - after.min(1).values).max() < 1e-6  # no colour at all
    assert torch.allclose(luma(after), luma(crops + change), atol=1e-6)  # the brightness change as drawn
    assert (change.max(1).values - change.min(1).values).max() > 0.05  # (the change did carry colour)


def test_a_colour_is_scaled_along_its_own_and_turned_no_further_than_the_limit():
    skin = torch.tensor([0.8, 0.6, 0.5]).view(1, 3, 1, 1).expand(1, 3, SIDE, SIDE)
    chroma = skin - luma(skin)[:, None]
    strength = chroma.norm(dim=1)
    bluer = torch.tensor([-0.05, 0.0, 0.1]).view(1, 3, 1, 1).expand_as(skin)  # a blue cast
    paler = -0.5 * chroma  # half the colour taken away: greying, paler lips
    richer = 2.0 * chroma  # three times the colour
    for gain, turn in ((1.1, 0.0), (2.0, 0.5)):
        limited = editor(gain, turn)
        for change, scale in ((bluer, None), (paler, 0.5), (richer, gain)):
            after = skin + limited.untinted_change(skin, [edit(20, 50)], change)
            after_chroma = after - luma(after)[:, None]
            along = (after_chroma * chroma).sum(1) / strength
            across = (after_chroma - along[:, None] * chroma / strength[:, None]).norm(dim=1)
            assert (along <= gain * strength + 1e-6).all() and (along >= -1e-6).all()
            assert (across <= turn * strength + 1e-6).all()  # a turn no larger than the limit
            if scale is not None:  # a change along the skin's own colour is kept up to the gain
                assert torch.allclose(after_chroma, scale * chroma, atol=1e-5)
            assert torch.allclose(luma(after), luma(skin + change), atol=1e-6)  # the brightness as drawn
    plain = editor(None)
    assert torch.equal(plain.untinted_change(skin, [edit(20, 50)], bluer), bluer)  # without a limit: as drawn


def test_a_face_whose_age_does_not_change_keeps_its_change():
    crops = torch.rand(2, 3, SIDE, SIDE)
    change = torch.zeros(2, 3, SIDE, SIDE)
    change[1] = 0.1 * torch.randn(3, SIDE, SIDE)
    kept = editor(1.1).untinted_change(crops, [edit(30, 30), edit(30, 60)], change)
    assert torch.equal(kept[0], change[0])  # exactly zero: a zero edit gives the photo back bit for bit
    assert not torch.equal(kept[1], change[1])


def test_the_setting_round_trips_and_bad_values_are_refused():
    assert tint_setting(TINT_LIMIT) == {"max_gain": 2.0, "max_turn": 0.5}
    assert tint_setting("1.1") == {"max_gain": 1.1, "max_turn": 0.0}
    assert tint_setting("off") is None
    for bad in ("0", "-1", "1:-2", "1:2:3", "x", "inf", "1:inf"):
        with pytest.raises(ValueError):
            tint_setting(bad)
    assert editor(2.0, 0.5).info()["tint_limit"] == {"max_gain": 2.0, "max_turn": 0.5}
    assert editor(None).info()["tint_limit"] is None


def test_the_shipped_editor_gives_a_black_and_white_photo_back_black_and_white(photo):
    shipped = json.loads((WEIGHTS / "editor.json").read_text())
    assert shipped.get(TINT_KEY) == tint_setting(TINT_LIMIT)  # as `python -m model.guard` writes it
    image = photo("skimage_camera.png")  # a grey photo of a turned head
    assert (image == image[..., :1]).all()
    shipped_editor = AgeEditor.from_dir(WEIGHTS)
    for years in (30, -25):
        result = shipped_editor.age_photo(image, years=years).image
        assert result is not None and not np.array_equal(result, image)  # the face was edited
        assert (result == result[..., :1]).all()  # and not one pixel got a colour
