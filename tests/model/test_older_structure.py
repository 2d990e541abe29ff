"""model.older_structure: an edit toward an older age draws its new lines only where real faces of that age
fold. Its broad change passes; its mid and fine change pass as a deepening of the face's own detail, or as
new darkening and lightening where the fold template says faces of the target age differ, or next to the
face's own strong features. A line drawn on bare skin elsewhere is taken out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from model.colour import blur, keep_cheek_colour
from model.framing import face_grid
from model.older_structure import OLDER_FILE, OLDER_KEY, OlderSettings, OlderStructure, fit_older_structure
from tests.model.test_carried_details import faces as flow_faces
from tests.model.test_carried_details import path_tensors, small_flow

SIDE = 64
FRAMING = "tight"
FOLD = (0.62, 0.55)  # where the template's older faces are darker (x, y of the crop): a nasolabial fold
BARE = (0.35, 0.75)  # bare skin, where real faces of either age look alike


def spot(depth: float, x: float, y: float, radius: float = 0.03) -> torch.Tensor:
    """A small dark spot (a fold's cross-section): 1 x 3 x S x S change."""
    ys, xs = face_grid(SIDE, FRAMING)
    return -depth * torch.exp(-(((xs - x) / radius) ** 2 + ((ys - y) / radius) ** 2)).expand(1, 3, SIDE, SIDE)


def rule(**settings) -> OlderStructure:
    """A rule whose fine template darkens FOLD by 0.03 between age 20 and 80 and changes nothing elsewhere."""
    knots = np.array([0.0, 20.0, 80.0, 90.0])
    fine = torch.zeros(4, 1, SIDE, SIDE)
    fine[2:] = spot(0.03, *FOLD)[:, :1]
    return OlderStructure(knots, fine, torch.zeros(4, 1, SIDE, SIDE), OlderSettings(**settings))


def area(x: float, y: float, half: float = 0.03) -> torch.Tensor:
    ys, xs = face_grid(SIDE, FRAMING)
    return ((xs - x).abs() < half) & ((ys - y).abs() < half)


def textured_face() -> torch.Tensor:
    torch.manual_seed(0)
    return (0.5 + 0.05 * torch.randn(1, 3, SIDE, SIDE)).clamp(0, 1)


def test_a_zero_change_stays_exactly_the_same():
    before = textured_face()
    assert torch.equal(rule().apply(before, before.clone(), [20.0], [80.0]), before)


def test_a_line_drawn_on_bare_skin_is_taken_out_and_one_along_a_fold_is_kept():
    before = torch.full((1, 3, SIDE, SIDE), 0.5)
    line_on_fold, line_on_skin = spot(0.15, *FOLD), spot(0.15, *BARE)
    kept = rule().apply(before, before + line_on_fold + line_on_skin, [20.0], [80.0]) - before
    on_fold, on_skin = area(*FOLD, 0.01), area(*BARE, 0.01)
    # on bare skin only the broad shading of the line is left: no more than its blur
    assert kept[:, :, on_skin].min() >= blur(line_on_skin, 12.0)[:, :, on_skin].min() - 1e-3
    assert kept[:, :, on_skin].min() > 0.2 * line_on_skin[:, :, on_skin].min()
    # along the fold its fine part is kept (the template allows 6 times its 0.03 there)
    fine_part = line_on_fold - blur(line_on_fold, 3.0)
    assert kept[:, :, on_fold].min() < 0.9 * fine_part[:, :, on_fold].min() < -0.05
    # and the same line is taken out when the face is edited to an age whose template has no fold there
    young = rule().apply(before, before + line_on_fold, [20.0], [20.5]) - before
    assert young[:, :, on_fold].min() > 0.5 * kept[:, :, on_fold].min()


def test_the_faces_own_detail_may_deepen_up_to_max_deepening():
    before = textured_face()
    detail = before - blur(before, 3.0)
    for times, cap in ((1.0, 3.0), (4.0, 3.0), (1.0, 0.5)):
        after = before + times * detail
        kept = rule(max_deepening=cap).apply(before, after, [20.0], [80.0])
        gained = ((kept - before) * detail).sum() / detail.square().sum()
        assert abs(float(gained) - min(times, cap)) < 0.25 * min(times, cap)


def test_the_broad_change_passes_as_it_is():
    before = textured_face()
    shading = 0.05 * torch.linspace(-1, 1, SIDE).view(1, 1, 1, SIDE).expand(1, 3, SIDE, SIDE)  # a side lighter
    tone = torch.tensor([0.03, 0.01, -0.02]).view(1, 3, 1, 1)  # and a warmer tone
    after = before + shading + tone
    kept = rule().apply(before, after, [20.0], [80.0])
    middle = slice(16, 48)  # away from the blur's reflected edges
    departure = (kept - after)[..., middle, middle].abs().max()
    assert departure < 0.1 * (after - before)[..., middle, middle].abs().max()
    assert torch.allclose(rule().apply(before, before + tone, [20.0], [80.0]), before + tone, atol=1e-5)


def test_the_template_is_fitted_from_faces_by_age():
    from model.data import FaceSet

    torch.manual_seed(0)
    ages = np.array([10.0] * 8 + [80.0] * 8)
    images = np.full((16, SIDE, SIDE, 3), 128, np.uint8)
    x, y = int(FOLD[0] * SIDE), int(FOLD[1] * SIDE)
    images[8:, y, x - 3 : x + 4] = 60  # the older faces have a fold there
    faces = FaceSet(images, ages.astype(np.float32), ["female"] * 16, [None] * 16, [f"{i}.png" for i in range(16)])
    fitted = fit_older_structure(faces, OlderSettings())
    change = fitted.template_change(fitted.fine, [10.0], [80.0], SIDE)
    assert change[0, 0, y, x] < -0.05  # darker where the older faces fold
    assert change[0, 0, 10, 10].abs() < 1e-6  # and no different elsewhere
    assert fitted.template_change(fitted.fine, [40.0], [40.0], SIDE).abs().max() == 0


def test_the_editor_applies_it_to_older_edits_only(tmp_path):
    from safetensors.torch import save_file

    from model.age import PosthocTrajectory
    from model.editor import AgeEditor

    flow = small_flow()
    trajectory = PosthocTrajectory(flow, path_tensors(flow), [0.5, 2.0], details="carried")
    shipped = rule()
    save_file({"fine": shipped.fine, "mid": shipped.mid}, str(tmp_path / OLDER_FILE))
    loaded = OlderStructure.load(tmp_path, shipped.settings_dict())
    assert loaded.settings == shipped.settings and torch.equal(loaded.fine, shipped.fine)
    faces = flow_faces(3)
    plain = AgeEditor(trajectory, {"model": {"framing": FRAMING}})
    ruled = AgeEditor(trajectory, {"model": {"framing": FRAMING}}, older_structure=loaded)
    ages = ruled.estimate_age(faces)
    years = [-20.0, 30.0, 25.0]
    targets = [float(a + y) for a, y in zip(ages, years)]
    with_rule, without = ruled.edit(faces, target_age=targets), plain.edit(faces, target_age=targets)
    if targets[0] >= 1:
        assert torch.equal(with_rule[0].after, without[0].after)  # the younger edit is untouched
    for i in (1, 2):
        expected = loaded.apply(faces[i : i + 1], without[i].after[None], [ages[i]], [targets[i]])
        if trajectory.keep_skin_tone:  # and then the cheeks' average colour, as the editor keeps it
            expected = keep_cheek_colour(faces[i : i + 1], expected, framing=FRAMING)
        assert torch.allclose(with_rule[i].after[None], expected, atol=1e-5)
    assert torch.equal(ruled.edit(faces, years=0)[0].after, faces[0])  # a zero edit is the face itself
    # /v1/model reports the rule's settings, and none without it
    assert ruled.info()["older_structure"] == shipped.settings_dict() and plain.info()["older_structure"] is None


def test_the_shipped_rule_is_what_model_older_structure_writes():
    weights = Path(__file__).resolve().parents[2] / "weights"
    shipped = json.loads((weights / "editor.json").read_text())
    if OLDER_KEY not in shipped:  # the weights ship without it: nothing of it may linger
        assert not (weights / OLDER_FILE).exists()
        return
    loaded = OlderStructure.load(weights, shipped[OLDER_KEY])
    assert loaded.fine.shape == loaded.mid.shape == (len(loaded.knots), 1, SIDE, SIDE)
    assert shipped[OLDER_KEY] == loaded.settings_dict()
