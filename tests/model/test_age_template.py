"""model.age_template: the template is the mean detail band of real faces by age, an edit adds its
difference between the age reached and the face's own on the skin, and a zero edit stays exact."""

import json

import numpy as np
import pytest
import torch

from model.age import PosthocTrajectory
from model.age_template import TEMPLATE_FILE, TEMPLATE_KEY, AgeTemplate, fit_template, main
from model.data import FaceSet
from model.editor import AgeEditor
from model.fine_detail import highpass
from model.masks import face_skin_mask
from tests.model.test_carried_details import path_tensors, small_flow

FRAMING = "tight"


def aging_faces(n: int = 400, seed: int = 0) -> FaceSet:
    """64 px stand-ins whose dark horizontal line, across the lower face, deepens with age."""
    rng = np.random.default_rng(seed)
    ages = rng.uniform(0, 90, n).astype(np.float32)
    images = np.full((n, 64, 64, 3), 150.0) + rng.normal(0, 3, (n, 64, 64, 3))
    images[:, 44:46, 16:48, :] -= ages[:, None, None, None] * 0.8
    return FaceSet(
        images=images.clip(0, 255).astype(np.uint8), ages=ages, genders=["female"] * n, races=[None] * n, files=[""] * n
    )


def test_the_template_holds_the_detail_of_each_age():
    faces = aging_faces()
    knots, bands = fit_template(faces, sigma_64=2.5, knot_step=10)
    assert knots.tolist() == [float(a) for a in range(0, 91, 10)]
    line = bands[:, :, 44:46, 20:44].mean((1, 2, 3))  # the line's depth in each knot's mean band
    assert (np.diff(line.numpy()) < 0).all()  # deeper (darker) with every decade
    # the mean band at a knot is the band of faces of that age, within the noise
    near_70 = np.flatnonzero(np.abs(faces.ages - 70) < 2)
    own = highpass(faces.batch(near_70), 2.5).mean(0)[:, 44:46, 20:44].mean()
    assert abs(float(line[7]) - float(own)) < 0.01


def test_an_edit_adds_the_difference_of_its_ages_on_the_skin_only():
    knots, bands = fit_template(aging_faces(), sigma_64=2.5)
    template = AgeTemplate(knots, bands, older=3.0, younger=1.0)
    change = template.change([20.0, 70.0, 40.0], [70.0, 20.0, 40.0], 64, FRAMING)
    skin = face_skin_mask(64, FRAMING)
    expected_older = 3.0 * (template.at([70.0], 64) - template.at([20.0], 64))[0] * skin
    assert torch.allclose(change[0], expected_older)
    assert torch.allclose(change[1], -expected_older / 3.0)  # younger: its own strength, the other way
    assert torch.equal(change[2], torch.zeros_like(change[2]))  # no change of age, no change
    assert change[0][:, 44:46, 20:44].mean() < -0.05  # older: the line deepens
    assert torch.equal(change[0][:, skin == 0], torch.zeros_like(change[0][:, skin == 0]))
    # between knots the template is linear; beyond the ends it stays at the last knot
    assert torch.allclose(template.at([25.0], 64), 0.5 * (template.at([20.0], 64) + template.at([30.0], 64)), atol=1e-6)
    assert torch.equal(template.at([95.0], 64), template.at([90.0], 64))


def test_the_editor_adds_the_template_after_the_guard_and_a_zero_edit_stays_exact(tmp_path):
    flow = small_flow()
    trajectory = PosthocTrajectory(flow, path_tensors(flow), [0.5, 2.0], details="carried")
    side = flow.config.resolution
    knots, bands = fit_template(aging_faces(), sigma_64=2.5)
    template = AgeTemplate(knots, bands, older=3.0, younger=1.0)
    settings = {"model": {"framing": FRAMING}, TEMPLATE_KEY: template.settings(2.5)}
    faces = torch.rand(3, 3, side, side, generator=torch.Generator().manual_seed(4)) * 0.5 + 0.25
    plain = AgeEditor(trajectory, {"model": {"framing": FRAMING}}).edit(faces, years=30)
    folded = AgeEditor(trajectory, settings, age_template=template).edit(faces, years=30)
    for a, b in zip(plain, folded):
        expected = template.change([a.age_before], [a.age_after], side, FRAMING)[0]
        assert torch.allclose(b.after, (a.after + expected).clamp(0, 1), atol=1e-5)
    for edit in AgeEditor(trajectory, settings, age_template=template).edit(faces, years=0):
        assert torch.equal(edit.after, edit.before)
    info = AgeEditor(trajectory, settings, age_template=template).info()
    assert info["age_template"]["older"] == 3.0


def test_the_command_writes_the_template_and_the_editor_loads_it(tmp_path, monkeypatch):
    faces = aging_faces(200)
    monkeypatch.setattr("model.data.load_faces", lambda *a, **k: faces)
    (tmp_path / "editor.json").write_text(json.dumps({"model": {"framing": FRAMING}}))
    main(["--weights", str(tmp_path), "--data", str(tmp_path), "--older", "2", "--younger", "0.5"])
    settings = json.loads((tmp_path / "editor.json").read_text())
    assert settings["model"] == {"framing": FRAMING}  # the rest of editor.json is kept
    assert (tmp_path / TEMPLATE_FILE).exists()
    loaded = AgeTemplate.load(tmp_path, settings[TEMPLATE_KEY])
    assert (loaded.older, loaded.younger) == (2.0, 0.5)
    assert torch.allclose(loaded.bands, fit_template(faces, 2.5)[1])


def test_a_relative_template_folds_dark_skin_as_much_shallower(tmp_path, monkeypatch):
    knots, bands = fit_template(aging_faces(), sigma_64=2.5)
    absolute = AgeTemplate(knots, bands, older=3.0, younger=1.0)
    relative = AgeTemplate(knots, bands, older=3.0, younger=1.0, relative_to=0.6)
    light, dark = torch.full((1, 3, 64, 64), 0.75), torch.full((1, 3, 64, 64), 0.3)
    full = absolute.change([20.0], [70.0], 64, FRAMING)
    # at or above the reference lightness the folds are the absolute template's; on darker skin shallower
    assert torch.allclose(relative.change([20.0], [70.0], 64, FRAMING, light), full, atol=1e-6)
    assert torch.allclose(relative.change([20.0], [70.0], 64, FRAMING, dark), full * 0.3 / 0.6, atol=1e-5)
    assert torch.equal(relative.change([40.0], [40.0], 64, FRAMING, dark), torch.zeros_like(full))
    with pytest.raises(ValueError, match="needs the faces"):
        relative.change([20.0], [70.0], 64, FRAMING)
    # the setting goes through editor.json and back
    faces = aging_faces(200)
    monkeypatch.setattr("model.data.load_faces", lambda *a, **k: faces)
    main(["--weights", str(tmp_path), "--data", str(tmp_path), "--older", "2", "--relative-to", "0.6"])
    settings = json.loads((tmp_path / "editor.json").read_text())[TEMPLATE_KEY]
    assert settings["relative_to"] == 0.6 and AgeTemplate.load(tmp_path, settings).relative_to == 0.6
