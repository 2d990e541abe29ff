"""model.colour.keep_structure: an edit toward a younger age keeps the face's own structure. Its broad change
passes, its finer change only as far as it softens the face's own detail: a feature drawn where the face has
none (a child's eye or lip over the person's) is taken out, a smoothing of the face's texture is kept."""

from __future__ import annotations

import pytest
import torch

from model.colour import blur, keep_structure
from model.framing import face_grid
from tests.model.test_carried_details import faces as flow_faces
from tests.model.test_carried_details import path_tensors, small_flow

SIDE = 64
FRAMING = "tight"
SETTING = (3.0, 2.0, 1.0)


def textured_face() -> torch.Tensor:
    """A mid-tone face with fine texture of its own (a skin's pores and creases)."""
    torch.manual_seed(0)
    return (0.5 + 0.08 * torch.randn(1, 3, SIDE, SIDE)).clamp(0, 1)


def spot(depth: float, x: float, y: float, radius: float = 0.03) -> torch.Tensor:
    """A dark spot of about an eye's size: N x 3 x S x S change."""
    ys, xs = face_grid(SIDE, FRAMING)
    return -depth * torch.exp(-(((xs - x) / radius) ** 2 + ((ys - y) / radius) ** 2)).expand(1, 3, SIDE, SIDE)


def fine(images: torch.Tensor) -> torch.Tensor:
    return images - blur(images, SETTING[0])


def test_a_zero_change_stays_exactly_the_same():
    before = textured_face()
    assert torch.equal(keep_structure(before, before.clone(), *SETTING), before)


def test_a_feature_drawn_where_the_face_has_none_is_taken_out():
    before = torch.full((1, 3, SIDE, SIDE), 0.5)  # a flat face: no detail of its own at the spot
    change = spot(0.3, 0.38, 0.42)
    kept = keep_structure(before, before + change, *SETTING) - before
    assert fine(change).abs().max() > 0.1  # the spot is fine structure, not broad shading
    # none of its fine structure is drawn: only its broad shading stays
    assert torch.allclose(kept, blur(change, SETTING[0]), atol=1e-6)
    assert kept.abs().max() < 0.5 * change.abs().max()


def test_a_smoothed_face_passes_and_a_sharpened_one_keeps_only_its_own_detail():
    before = textured_face()
    smoothed = blur(before, 1.0)
    kept = keep_structure(before, smoothed, *SETTING)
    # the smoothing takes away the face's own fine detail: most of it passes
    assert (kept - smoothed).abs().mean() < 0.25 * (before - smoothed).abs().mean()
    # doubling the face's detail draws nothing the face does not have, but is no softening: it is dropped
    sharpened = (before + fine(before)).clamp(0, 1)
    kept = keep_structure(before, sharpened, *SETTING)
    assert (fine(kept) - fine(before)).abs().mean() < 0.1 * (fine(sharpened) - fine(before)).abs().mean()


def test_the_softening_is_at_most_max_softening_of_the_faces_detail():
    before = textured_face()
    flattened = blur(before, SETTING[0]) - fine(before)  # takes away twice the face's detail
    for cap in (0.5, 1.0):
        kept = keep_structure(before, flattened, SETTING[0], SETTING[1], cap)
        assert fine(kept).abs().mean() >= (1 - cap) * fine(before).abs().mean() * 0.8


def test_the_setting_is_what_the_editor_reads_and_off_is_none():
    from model.editor import AgeEditor
    from model.guard import structure_setting

    editor = AgeEditor.__new__(AgeEditor)
    editor.settings = {"younger_structure": structure_setting("3:2")}
    assert editor.younger_structure == (3.0, 2.0, 1.0, 0, 0.0, 1.0)
    editor.settings = {"younger_structure": structure_setting("4:1.5:0.8")}
    assert editor.younger_structure == (4.0, 1.5, 0.8, 0, 0.0, 1.0)
    editor.settings = {"younger_structure": structure_setting("3:2:1:2:0.1:1")}
    assert editor.younger_structure == (3.0, 2.0, 1.0, 2, 0.1, 1.0)
    editor.settings = {}
    assert editor.younger_structure is None
    assert structure_setting("off") is None
    for bad in (
        "3",
        "a:b",
        "0:1",
        "3:-1",
        "3:2:0",
        "3:2:1:1",
        "inf:2",
        "3:2:1:1.5:0.1:1",
        "3:2:1:2:0.1:0",
        "3:2:1:2:0.1",
    ):
        with pytest.raises(ValueError, match="younger structure"):
            structure_setting(bad)


def test_the_editor_keeps_the_structure_of_younger_edits_only(monkeypatch):
    import model.editor
    from model.age import PosthocTrajectory
    from model.editor import AgeEditor
    from model.guard import structure_setting

    flow = small_flow()
    trajectory = PosthocTrajectory(flow, path_tensors(flow), [0.5, 2.0], details="carried")
    seen = []

    def spy(before, after, *args):
        seen.append(len(before))
        return keep_structure(before, after, *args)

    monkeypatch.setattr(model.editor, "keep_structure", spy)
    faces = flow_faces(3)
    plain = AgeEditor(trajectory, {"model": {"framing": FRAMING}})
    kept = AgeEditor(trajectory, {"model": {"framing": FRAMING}, "younger_structure": structure_setting("3:2")})
    ages = kept.estimate_age(faces)
    years = [-20.0, 30.0, -10.0]
    targets = [float(a + y) for a, y in zip(ages, years)]
    with_structure, without = kept.edit(faces, target_age=targets), plain.edit(faces, target_age=targets)
    younger = [i for i, y in enumerate(years) if y < 0 and targets[i] >= 1]
    assert seen and all(n == len(younger) for n in seen)
    assert torch.equal(with_structure[1].after, without[1].after)  # the older edit is untouched
    for i in younger:
        expected = keep_structure(faces[i : i + 1], without[i].after[None], *SETTING)
        assert torch.allclose(with_structure[i].after[None], expected, atol=1e-6)
    # a zero edit is still the face itself
    assert torch.equal(kept.edit(faces, years=0)[0].after, faces[0])


def test_the_faces_own_features_may_grow_but_nothing_is_drawn_on_bare_skin():
    before = torch.full((1, 3, SIDE, SIDE), 0.6)
    before = before + spot(0.4, 0.35, 0.3, radius=0.02)  # the face's own dark feature (an eye)
    grow = spot(0.2, 0.35 + 0.035, 0.3)  # the change darkens round it: the eye widens
    bare = spot(0.2, 0.65, 0.6)  # and draws the same on bare skin far from any feature
    after = before + grow + bare
    kept = keep_structure(before, after, *SETTING, 2, 0.1, 1.0) - before
    soft_only = keep_structure(before, after, *SETTING) - before
    ys, xs = face_grid(SIDE, FRAMING)
    by_eye = ((xs - 0.385).abs() < 0.03) & ((ys - 0.3).abs() < 0.03)
    on_skin = ((xs - 0.65).abs() < 0.03) & ((ys - 0.6).abs() < 0.03)
    assert by_eye.any() and on_skin.any()
    # next to the eye the widening is kept (deeper than the softening rule alone leaves it)
    assert kept[:, :, by_eye].mean() < 1.25 * soft_only[:, :, by_eye].mean() < 0
    # on bare skin the growth rule adds nothing
    assert torch.allclose(kept[:, :, on_skin], soft_only[:, :, on_skin], atol=1e-6)
    assert torch.equal(keep_structure(before, before.clone(), *SETTING, 2, 0.1, 1.0), before)


def test_the_shipped_editor_keeps_younger_structure_as_the_guard_writes_it():
    import json
    from pathlib import Path

    from model.guard import YOUNGER_STRUCTURE, structure_setting

    shipped = json.loads((Path(__file__).resolve().parents[2] / "weights" / "editor.json").read_text())
    assert shipped["younger_structure"] == structure_setting(YOUNGER_STRUCTURE)
