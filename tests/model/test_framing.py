"""Framings: the tight crop's landmarks, regions drawn once in loose coordinates, resampling between
framings, the paste-back mask of each framing, and the aligner cutting the model's framing."""

import numpy as np
import pytest
import torch

from model.align import FaceAligner, face_scale, paste_back, reframe
from model.framing import FRAMINGS, face_grid
from model.masks import face_mask, face_skin_mask, skin_region


def pixel_of(point: np.ndarray, side: int) -> tuple[int, int]:
    """The (row, column) of the pixel holding a unit-crop point (x, y)."""
    return int(point[1] * side), int(point[0] * side)


def test_the_loose_grid_is_the_crop_grid_and_the_tight_grid_maps_its_landmarks_onto_the_loose_ones():
    side = 256
    ys, xs = face_grid(side, "tight")
    for tight, loose in zip(FRAMINGS["tight"], FRAMINGS["loose"]):
        row, col = pixel_of(tight, side)
        # a least-squares similarity: each landmark lands within 2 % of the crop of its loose position
        assert abs(xs[row, col] - loose[0]) < 0.02 and abs(ys[row, col] - loose[1]) < 0.02
    loose_ys, loose_xs = face_grid(side, "loose")
    assert loose_xs[0, 0] == pytest.approx(0.5 / side) and loose_ys[-1, 0] == pytest.approx(1 - 0.5 / side)


def test_the_face_is_about_twice_as_large_in_the_tight_crop():
    assert face_scale("loose") == 1.0
    assert 1.8 < face_scale("tight") < 2.1


def test_reframing_a_loose_crop_to_tight_and_back_keeps_the_centre_and_blanks_what_it_cannot_reach():
    side = 128
    ys, xs = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    loose = torch.stack([xs, ys, xs * ys])[None]  # smooth, so bilinear resampling loses little
    tight = reframe(loose, "loose", "tight", side)
    back = reframe(tight, "tight", "loose", side)
    # the tight crop lies inside the loose one: every tight pixel is covered
    assert tight.abs().sum(1).gt(0).float().mean() > 0.99
    centre = slice(side // 2 - 10, side // 2 + 10)
    assert torch.allclose(back[..., centre, centre], loose[..., centre, centre], atol=0.02)
    assert back[0, :, 2, 2].abs().max() == 0  # the loose crop's corner is outside the tight crop


def test_the_same_landmark_lands_on_the_same_region_in_both_framings():
    side = 64
    for framing in FRAMINGS:
        nose = FRAMINGS[framing][2]
        row, col = pixel_of(nose, side)
        assert skin_region(side, framing)[row + 1, col] == 1.0  # cheeks and nose hold the nose tip
        assert face_skin_mask(side, framing)[row, col] == 1.0
    # the regions cover about four times the share of a tight crop that they cover of a loose one
    ratio = skin_region(side, "tight").mean() / skin_region(side, "loose").mean()
    assert 3.0 < ratio < 4.6


@pytest.mark.parametrize("framing", list(FRAMINGS))
def test_each_framing_pastes_the_whole_centre_and_nothing_at_the_crop_edges(framing):
    mask = face_mask(64, framing)
    assert mask[32, 32] == 1.0
    assert mask[0].max() == 0 and mask[:, 0].max() == 0 and mask[-1].max() == 0 and mask[:, -1].max() == 0
    for eye in FRAMINGS[framing][:2]:
        assert mask[pixel_of(eye, 64)] == 1.0  # the eyes are edited in full


def test_the_aligner_cuts_the_framing_it_is_asked_for_and_the_face_carries_it(photo, aligner):
    image = photo("skimage_astronaut.png")
    (face,) = aligner.detect(image)
    loose = aligner.align(image, face, (64,))
    tight = aligner.align(image, face, (64,), framing="tight")
    assert (loose.framing, tight.framing) == ("loose", "tight")
    eyes = face.landmarks[:2]
    for aligned in (loose, tight):
        mapped = eyes @ aligned.matrix[:, :2].T + aligned.matrix[:, 2]
        assert np.abs(mapped - FRAMINGS[aligned.framing][:2]).max() < 0.03
    # paste-back follows the face's framing: a tight change touches a smaller part of the photo
    touched = {
        a.framing: (paste_back(image, a, torch.full((3, 64, 64), 0.3)) != image).any(2).sum() for a in (loose, tight)
    }
    assert 0 < touched["tight"] < touched["loose"]


def test_an_unknown_framing_is_refused():
    with pytest.raises(ValueError, match="unknown framing"):
        FaceAligner(framing="wide")
