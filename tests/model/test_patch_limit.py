"""model.colour.limit_patches: an edit's broad patches over the skin are flattened; lines, the hair and a
zero edit are left as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.colour import blotch_shares, blur, limit_patches
from model.framing import face_grid
from model.masks import face_skin_mask
from tests.model.test_carried_details import faces as flow_faces
from tests.model.test_carried_details import path_tensors, small_flow

SIDE = 64
FRAMING = "tight"


def face() -> torch.Tensor:
    torch.manual_seed(0)
    return (0.55 + 0.05 * torch.rand(1, 3, SIDE, SIDE)).clamp(0, 1)


def cheek_patch(depth: float) -> torch.Tensor:
    """A dark, soft-edged patch of a few pixels on the cheek: N x 3 x S x S change."""
    ys, xs = face_grid(SIDE, FRAMING)
    bump = torch.exp(-(((xs - 0.38) / 0.06) ** 2 + ((ys - 0.62) / 0.06) ** 2))
    return -depth * bump.expand(1, 3, SIDE, SIDE)


def test_a_zero_edit_stays_exactly_the_same():
    before = face()
    assert torch.equal(limit_patches(before, before.clone(), 0.04, 1.5, FRAMING), before)


def test_a_dark_patch_is_flattened_to_the_limit():
    before = face()
    after = (before + cheek_patch(0.3)).clamp(0, 1)
    limited = limit_patches(before, after, 0.04, 1.5, FRAMING)
    broad_before = blur(after - before, 1.5).norm(dim=1).max()
    broad_after = blur(limited - before, 1.5).norm(dim=1).max()
    assert broad_before > 0.3
    assert broad_after < 0.1
    assert blotch_shares(before, after, FRAMING)[0] > blotch_shares(before, limited, FRAMING)[0]


def test_thin_lines_and_changes_off_the_skin_pass():
    before = face()
    change = torch.zeros_like(before)
    change[:, :, 40, 20:44] = -0.12  # a one-pixel fold across the lower face
    skin = face_skin_mask(SIDE, FRAMING)
    change[:, :, skin == 0] = 0.2  # hair greying where there is no skin
    after = before + change
    limited = limit_patches(before, after, 0.04, 1.5, FRAMING)
    kept = (limited - before)[:, :, 40, 20:44]
    assert kept.mean() < -0.09  # most of the line's depth stays
    off_skin = skin == 0
    assert off_skin.float().mean() > 0.05
    assert torch.equal(limited[:, :, off_skin], after[:, :, off_skin])


def test_a_deep_line_is_held_to_the_line_limit_and_shallow_texture_passes():
    before = face()
    change = torch.zeros_like(before)
    change[:, :, 40, 20:44] = -0.3  # a gash of near-black across the lower face
    change[:, :, 30, 20:44] = -0.05  # a shallow fold, within the line limit
    after = before + change
    limited = limit_patches(before, after, 0.15, 1.0, FRAMING, max_line_departure=0.1)
    skin = face_skin_mask(SIDE, FRAMING)
    inside = skin[40, 20:44] > 0.99
    gash = (limited - before)[:, :, 40, 20:44][:, :, inside]
    assert gash.norm(dim=1).max() <= 0.1 + 1e-6  # held to the limit's depth (the change's median is 0)
    assert gash.norm(dim=1).min() > 0.09  # and not flattened further
    assert torch.allclose(limited[:, :, 30], after[:, :, 30])  # the shallow fold passes as it is
    # without the line limit the same gash keeps most of its depth (the broad limit leaves thin lines)
    broad_only = limit_patches(before, after, 0.15, 1.0, FRAMING)
    assert (broad_only - before)[:, :, 40, 20:44][:, :, inside].norm(dim=1).max() > 0.25
    assert torch.equal(limit_patches(before, before.clone(), 0.15, 1.0, FRAMING, max_line_departure=0.1), before)


def test_the_patch_limit_setting_is_what_the_editor_reads_and_off_is_none():
    from model.editor import AgeEditor
    from model.guard import PATCH_LIMIT, patch_limit_setting

    setting = patch_limit_setting(PATCH_LIMIT)
    assert setting == {"max_departure": 0.15, "sigma_64": 1.0}
    editor = AgeEditor.__new__(AgeEditor)
    editor.settings = {"patch_limit": setting}
    assert editor.patch_limit == (0.15, 1.0) and editor.line_limit is None
    editor.settings = {"patch_limit": patch_limit_setting("0.2:1.5:0.1")}
    assert editor.patch_limit == (0.2, 1.5) and editor.line_limit == 0.1
    assert patch_limit_setting("off") is None
    for bad in ("0.15", "a:b", "0:1", "0.1:-1", "0.1:1:0", "0.1:1:0.1:2", "0.1:1:inf", "inf:1"):
        with pytest.raises(ValueError, match="patch limit"):
            patch_limit_setting(bad)


def test_the_shipped_editor_limits_broad_patches_as_the_guard_writes_it():
    from model.guard import PATCH_LIMIT, patch_limit_setting

    shipped = json.loads((Path(__file__).resolve().parents[2] / "weights" / "editor.json").read_text())
    assert shipped["patch_limit"] == patch_limit_setting(PATCH_LIMIT)


def test_the_editor_hands_its_line_limit_to_the_patch_control(monkeypatch):
    import model.editor
    from model.age import PosthocTrajectory
    from model.editor import AgeEditor
    from model.guard import patch_limit_setting

    flow = small_flow()
    trajectory = PosthocTrajectory(flow, path_tensors(flow), [0.5, 2.0], details="carried")
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs.get("max_line_departure"))
        return limit_patches(*args, **kwargs)

    monkeypatch.setattr(model.editor, "limit_patches", spy)
    for setting, expected in (("0.15:1.0:0.05", 0.05), ("0.15:1.0", None)):
        editor = AgeEditor(trajectory, {"model": {"framing": FRAMING}, "patch_limit": patch_limit_setting(setting)})
        seen.clear()
        editor.edit(flow_faces(2), years=30)
        assert seen and all(value == expected for value in seen)
