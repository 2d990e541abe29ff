"""The post-hoc age fit, on synthetic faces whose age and source are known pixel features.

Age brightens the top band of each image (greying hair); the source folder brightens the whole image, and
the older faces come mostly from one source, as in the real data. The fit must read age from the latents,
and its age path must move the top band without taking the source's brightness along.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model.age import PosthocTrajectory
from model.age_fit import fit_posthoc
from model.config import FlowConfig
from model.data import FaceSet
from model.flow.glow import Glow

SIDE = 16
ROOT = Path(__file__).resolve().parents[2]


def synthetic_faces(n: int, seed: int) -> FaceSet:
    rng = np.random.default_rng(seed)
    ages = rng.uniform(1, 90, n).astype(np.float32)
    # old faces mostly from "bright", young ones mostly from "dark"
    bright = rng.random(n) < np.where(ages > 45, 0.85, 0.15)
    base = rng.uniform(0.3, 0.5, (n, 1, 1, 1)) + rng.normal(0, 0.03, (n, SIDE, SIDE, 3))
    images = base + 0.15 * bright[:, None, None, None]
    images[:, : SIDE // 4] += (ages[:, None, None, None] / 90.0) * 0.3
    genders = list(rng.choice(["male", "female"], n))
    races = list(rng.choice(["white", "black", "asian"], n))
    return FaceSet(
        images=np.clip(np.rint(images * 255), 0, 255).astype(np.uint8),
        ages=ages,
        genders=genders,
        races=races,
        files=[f"{i}.png" for i in range(n)],
        sources=["bright" if b else "dark" for b in bright],
    )


@pytest.fixture(scope="module", params=[0, 2], ids=["all directions", "rank 2"])
def fitted(request):
    torch.manual_seed(0)
    flow = Glow(FlowConfig(resolution=SIDE, levels=2, steps=2, width=16)).eval()
    train = synthetic_faces(1500, seed=0)
    with torch.no_grad():  # ActNorm's data-dependent initialization
        flow.log_prob(train.batch(np.arange(200)), train.conditions(flow.config, np.arange(200)))
    messages = []
    return flow, fit_posthoc(flow, train, rank=request.param, log=messages.append), messages


def test_the_fitted_reading_tells_age_far_better_than_the_mean(fitted):
    flow, tensors, messages = fitted
    test = synthetic_faces(300, seed=1)
    trajectory = PosthocTrajectory(flow, tensors)
    read = trajectory.estimate(test.batch(np.arange(len(test)))).ages
    error = np.abs(read - test.ages).mean()
    mean_guess = np.abs(test.ages.mean() - test.ages).mean()
    print(f"synthetic age reading error {error:.1f} years vs {mean_guess:.1f} for the mean; {messages}")
    assert error < 0.4 * mean_guess
    assert any("chose" in m for m in messages)


def test_the_age_path_moves_the_aged_band_and_not_the_source_brightness(fitted):
    flow, tensors, _ = fitted
    test = synthetic_faces(100, seed=2)
    faces = test.batch(np.arange(len(test)))
    trajectory = PosthocTrajectory(flow, tensors, keep_skin_tone=False)
    reading = trajectory.estimate(faces)
    target = np.clip(reading.ages + 40, 1, 90)
    older = trajectory.move(faces, reading, target)
    change = (older - faces).mean(0).mean(0)  # S x S
    band, rest = change[: SIDE // 4].mean().item(), change[SIDE // 4 :].mean().item()
    expected = float(np.mean(target - reading.ages)) / 90.0 * 0.3  # how these faces brighten with age
    print(f"+40 years: top band {band:+.3f} (expected {expected:+.3f}), rest {rest:+.3f}")
    assert band > 0.7 * expected
    assert abs(rest) < 0.02  # the source's 0.15 stays out of the age path (the age mix alone would add ~0.05)


def test_colour_control_keeps_brightness_and_greying_but_drops_an_added_tint():
    from model.colour import no_added_tint

    before = torch.tensor([0.6, 0.4, 0.3]).view(1, 3, 1, 1).expand(1, 3, 4, 4).clone()  # brown
    assert torch.allclose(no_added_tint(before, before), before, atol=1e-5)
    grey = before.mean(1, keepdim=True).expand_as(before)
    greyed = no_added_tint(before, 0.5 * before + 0.5 * grey + 0.1)  # lighter and half as colourful
    assert torch.allclose(greyed, 0.5 * before + 0.5 * grey + 0.1, atol=1e-3)
    blue_cast = before + torch.tensor([-0.1, 0.0, 0.15]).view(1, 3, 1, 1)
    fixed = no_added_tint(before, blue_cast)
    luma = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    assert torch.allclose((fixed * luma).sum(1), (blue_cast * luma).sum(1), atol=1e-5)  # brightness kept

    def hue(x: torch.Tensor) -> torch.Tensor:
        chroma = x - (x * luma).sum(1, keepdim=True)
        return chroma / chroma.norm(dim=1, keepdim=True)

    assert torch.allclose(hue(fixed), hue(before), atol=1e-4)  # no hue of its own


def test_skin_tone_is_kept_on_the_skin_and_the_background_is_left_alone():
    from model.colour import keep_skin_tone
    from model.masks import face_skin_mask, skin_region

    before = torch.full((1, 3, 64, 64), 0.5)
    after = before + torch.tensor([-0.1, -0.05, -0.05]).view(1, 3, 1, 1)  # everything darker
    kept = keep_skin_tone(before, after)
    region = skin_region(64)
    assert ((kept - before) * region).sum((2, 3)).abs().max() / region.sum() < 1e-4  # cheeks: unchanged
    assert torch.allclose(kept[..., 0, 0], after[..., 0, 0])  # the corner: outside the face, as the edit left it
    assert face_skin_mask(64)[38, 32] == 1.0 and face_skin_mask(64)[0, 0] == 0.0


def test_the_cheeks_keep_their_colour_where_an_edit_reaches_the_end_of_the_pixel_range():
    from model.colour import cheek_shift, keep_cheek_colour, keep_skin_tone

    torch.manual_seed(0)
    before = torch.full((1, 3, 64, 64), 0.9) + 0.05 * torch.rand(1, 3, 64, 64)  # light skin, bright light
    after = before + 0.15 * torch.randn(1, 3, 64, 64)  # an edit's fine detail: highlights and shadows
    clipped = keep_skin_tone(before, after).clamp(0, 1)
    settled = keep_cheek_colour(before, clipped)
    print(
        f"cheek shift after clipping {cheek_shift(before, clipped).abs().max():.4f}, "
        f"settled {cheek_shift(before, settled).abs().max():.4f}"
    )
    assert cheek_shift(before, clipped).abs().max() > 0.01  # clipping alone moves the cheeks' colour
    assert cheek_shift(before, settled).abs().max() < 0.002
    assert settled.min() >= 0 and settled.max() <= 1


def test_younger_edits_take_their_own_level_strengths_and_older_ones_keep_theirs(fitted, tmp_path):
    from model.age import load_trajectory, save_trajectory
    from model.checkpoint import save_flow

    flow, tensors, _ = fitted
    faces = synthetic_faces(4, seed=2).batch(np.arange(4))
    both = PosthocTrajectory(flow, tensors, [1.0, 1.0])
    split = PosthocTrajectory(flow, tensors, [1.0, 1.0], younger_level_strengths=[0.0, 0.0])
    reading = both.estimate(faces)
    older, younger = reading.ages + 20, np.maximum(reading.ages - 20, 1.0)
    with torch.no_grad():
        assert torch.allclose(split.move(faces, reading, older), both.move(faces, reading, older))
        # no strength at any level: a younger edit decodes the face's own latents
        assert torch.allclose(split.move(faces, reading, younger), flow.decode(reading.latents), atol=1e-5)
        mixed = np.where(np.arange(4) % 2 == 0, older, younger)
        moved = split.move(faces, reading, mixed)
        assert torch.allclose(moved[0::2], both.move(faces, reading, older)[0::2], atol=1e-5)
    save_flow(flow, tmp_path)
    save_trajectory(tmp_path, split)
    assert load_trajectory(tmp_path, flow).younger_level_strengths == [0.0, 0.0]


def test_the_editor_imports_neither_the_fit_nor_the_training_set_loader():
    finished = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, model.editor; print(sorted({'model.age_fit', 'model.data'} & set(sys.modules)))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.stdout.strip() == "[]", finished.stderr
