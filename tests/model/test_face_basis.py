"""model.face_basis: an edit's fine change on the skin keeps only its projection onto the leading components
of real faces' detail; its broad part and its detail off the skin pass as they are, and a zero change (and a
zero edit) stays exact."""

import json

import pytest
import torch
import torch.nn.functional as F

from model.age import PosthocTrajectory
from model.editor import AgeEditor
from model.face_basis import BASIS_FILE, BASIS_KEY, FaceBasis, fit_basis, main
from model.fine_detail import highpass
from model.masks import face_skin_mask
from tests.model.test_age_template import aging_faces
from tests.model.test_carried_details import path_tensors, small_flow

FRAMING = "tight"
SIGMA = 2.0


def random_changes(side: int, k: int, seed: int = 0) -> torch.Tensor:
    """K random changes of a `side` px crop with detail a few pixels wide (as folds are), none pixel-fine."""
    coarse = 0.05 * torch.randn(k, 3, side // 4, side // 4, generator=torch.Generator().manual_seed(seed))
    return F.interpolate(coarse, size=side, mode="bilinear", align_corners=False)


def random_basis(side: int, k: int, seed: int = 0) -> FaceBasis:
    """K orthonormal patterns on the skin of a `side` px crop: the skin's detail bands of K random changes."""
    skin = face_skin_mask(side, FRAMING)
    patterns = highpass(random_changes(side, k, seed), SIGMA) * skin
    q, _ = torch.linalg.qr(patterns.flatten(1).double().T)
    return FaceBasis(q.T.float().view(k, 3, side, side).contiguous(), SIGMA, FRAMING)


def test_a_change_made_of_the_basis_is_kept_and_one_orthogonal_to_it_is_dropped_on_the_skin():
    side = 64
    basis = random_basis(side, 8)
    before = torch.full((1, 3, side, side), 0.5)
    # a change whose detail band on the skin the basis draws passes whole
    change = random_changes(side, 8)[3:4]
    assert torch.allclose(basis.project(before, before + change), before + change, atol=1e-5)
    # a fine pattern over the skin that no component draws: its detail band is gone
    skin = face_skin_mask(side, FRAMING)
    checker = ((torch.arange(side)[:, None] + torch.arange(side)[None, :]) % 2).float().expand(1, 3, side, side)
    pattern = 0.1 * (checker - 0.5) * skin
    band = highpass(pattern, SIGMA)
    components = basis.components.flatten(1)
    kept_band = ((band * skin).flatten(1) @ components.T @ components).view_as(band)
    dropped = basis.project(before, before + pattern) - before
    assert highpass(dropped, SIGMA)[:, :, skin > 0.99].abs().max() < 0.1 * band[:, :, skin > 0.99].abs().max()
    # what is left: the pattern less its band on the skin, plus that band's (small) projection
    assert torch.allclose(dropped, pattern - band * skin + kept_band, atol=1e-5)


def test_the_broad_change_and_the_detail_off_the_skin_pass_as_they_are():
    side = 64
    basis = random_basis(side, 8)
    before = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(1)) * 0.5 + 0.25
    # a broad change (a tone shift, even across the face) has no detail band to project
    broad = before + torch.tensor([0.04, -0.02, 0.03]).view(1, 3, 1, 1)
    assert torch.allclose(basis.project(before, broad), broad, atol=1e-5)
    # fine detail where the skin mask is zero (hair, background) is not touched
    skin = face_skin_mask(side, FRAMING)
    noise = 0.1 * torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(2)) * (skin == 0)
    off = basis.project(before, before + noise)
    assert torch.allclose(off[:, :, skin == 0], (before + noise)[:, :, skin == 0], atol=1e-3)
    # a zero change stays exactly zero
    assert torch.equal(basis.project(before, before.clone()), before)


def test_a_basis_of_another_side_is_refused():
    with pytest.raises(ValueError, match="64 px, not 32 px"):
        random_basis(64, 4).project(torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32))


def test_the_editor_projects_the_moved_face_and_a_zero_edit_stays_exact():
    flow = small_flow()
    side = flow.config.resolution
    # no skin-tone controls and a small edit (nothing leaves the gamut): the projection is all that differs
    trajectory = PosthocTrajectory(flow, path_tensors(flow), [0.5, 2.0], details="carried", keep_skin_tone=False)
    basis = random_basis(side, 6)
    settings = {"model": {"framing": FRAMING}}
    faces = torch.rand(3, 3, side, side, generator=torch.Generator().manual_seed(4)) * 0.5 + 0.25
    plain = AgeEditor(trajectory, settings).edit(faces, years=1)
    projected = AgeEditor(trajectory, settings, face_basis=basis).edit(faces, years=1)
    for a, b in zip(plain, projected):
        assert 0 < a.after.min() and a.after.max() < 1
        assert torch.allclose(b.after, basis.project(a.before[None], a.after[None])[0], atol=1e-5)
        assert (b.after - a.after).abs().max() > 1e-3  # the projection changed something
    for edit in AgeEditor(trajectory, settings, face_basis=basis).edit(faces, years=0):
        assert torch.equal(edit.after, edit.before)


def test_the_basis_holds_the_leading_components_of_real_faces_detail():
    faces = aging_faces(300)
    basis = fit_basis(faces, components=5, sigma_64=2.5, framing=FRAMING, n_faces=200, seed=0, batch=64)
    flat = basis.components.flatten(1).double()
    assert torch.allclose(flat @ flat.T, torch.eye(5, dtype=torch.float64), atol=1e-4)  # orthonormal
    skin = face_skin_mask(64, FRAMING)
    assert basis.components[:, :, skin == 0].abs().max() == 0  # on the skin only
    # the first component draws the line across the lower face, the detail every one of these faces has
    first = basis.components[0].abs()
    assert first[:, 44:46, 20:44].mean() > 5 * first[:, 10:30, 10:30].mean()
    # the faces' own detail is kept almost whole by the basis: a real face's detail band projects onto it
    band = highpass(faces.batch(range(250, 260)), 2.5) * skin
    kept = band.flatten(1) @ flat.float().T @ flat.float()
    assert (kept - band.flatten(1)).norm() < 0.9 * band.norm()


def test_the_command_writes_the_basis_and_the_editor_and_bench_load_it(tmp_path, monkeypatch):
    faces = aging_faces(200)
    monkeypatch.setattr("model.data.load_faces", lambda *a, **k: faces)
    (tmp_path / "editor.json").write_text(json.dumps({"model": {"framing": FRAMING}}))
    main(["--weights", str(tmp_path), "--data", str(tmp_path), "--components", "7", "--faces", "150"])
    settings = json.loads((tmp_path / "editor.json").read_text())
    assert settings["model"] == {"framing": FRAMING}  # the rest of editor.json is kept
    assert settings[BASIS_KEY] == {"components": 7, "sigma_64": 4.0, "framing": FRAMING, "faces": 150, "seed": 0}
    assert (tmp_path / BASIS_FILE).exists()
    loaded = FaceBasis.load(tmp_path, settings[BASIS_KEY])
    fitted = fit_basis(faces, 7, 4.0, FRAMING, 150, 0)
    # stored in half precision; the sign of each eigenvector is the same fit's
    assert torch.allclose(loaded.components, fitted.components, atol=2e-3)
    # fewer components than were fitted: the leading ones
    assert FaceBasis.load(tmp_path, {**settings[BASIS_KEY], "components": 3}).components.shape[0] == 3
    assert FaceBasis.load(tmp_path, settings[BASIS_KEY]).framing == FRAMING
