"""model.age_guided: the guided refit decodes what the editor decodes, its corrections get gradients, its
guide learns an age from pixels, and its targets stay in range.

A small flow with small random prior weights stands in for the face flow (as in test_carried_details)."""

import numpy as np
import pytest
import torch

from model.age import PosthocTrajectory
from model.age_guided import GuidedPath, decode_along, reading_table, sample_targets, train_guide
from model.colour import keep_cheek_colour, keep_skin_tone, limit_patches, no_added_tint
from model.data import FaceSet
from tests.model.test_carried_details import SIDE, path_tensors, small_flow

FRAMING = "tight"
PATCH = (0.15, 1.0)


@pytest.fixture(scope="module")
def trajectory() -> PosthocTrajectory:
    flow = small_flow()
    for parameter in flow.parameters():
        parameter.requires_grad_(False)
    return PosthocTrajectory(flow, path_tensors(flow), [0.5, 2.0], details="carried")


def faces(n: int = 6) -> torch.Tensor:
    return (0.3 + 0.4 * torch.rand(n, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(3))).clamp(0, 1)


def test_with_no_correction_it_decodes_what_the_editor_decodes(trajectory):
    x = faces()
    reading = trajectory.estimate(x)
    target = np.clip(reading.ages + 30, 1, 90)
    path = GuidedPath(trajectory.tensors)
    ours, bits = decode_along(trajectory, path.tensors(trajectory.tensors), x, reading, target, FRAMING, PATCH)
    with torch.no_grad():
        moved, moved_bits = trajectory.move(x, reading, target, with_bits=True)
        editor = keep_skin_tone(x, no_added_tint(x, moved), FRAMING)
        editor = limit_patches(x, editor, *PATCH, framing=FRAMING).clamp(0, 1)
        editor = keep_cheek_colour(x, editor, framing=FRAMING)
    assert torch.allclose(ours, editor, atol=1e-5)
    assert torch.allclose(bits, moved_bits, atol=1e-5)


def test_the_corrections_are_the_top_levels_and_get_gradients(trajectory):
    x = faces()
    reading = trajectory.estimate(x)
    path = GuidedPath(trajectory.tensors, levels=1)
    assert list(path.corrections) == ["level1_age"]  # the top level of a two-level flow
    after, bits = decode_along(
        trajectory, path.tensors(trajectory.tensors), x, reading, np.clip(reading.ages + 30, 1, 90), FRAMING, PATCH
    )
    (after.mean() + bits.mean()).backward()
    gradient = path.corrections["level1_age"].grad
    assert gradient is not None and gradient.abs().sum() > 0
    with torch.no_grad():
        path.corrections["level1_age"].add_(1.0)
    corrected = path.tensors(trajectory.tensors)
    assert torch.equal(corrected["level1_age"], trajectory.tensors["level1_age"] + 1.0)
    assert torch.equal(corrected["level0_age"], trajectory.tensors["level0_age"])


def test_targets_are_in_range_and_move_every_face():
    rng = np.random.default_rng(0)
    ages = rng.uniform(1, 90, 2000)
    target = sample_targets(ages, rng, 1.0, 90.0)
    assert target.min() >= 1.0 and target.max() <= 90.0
    assert (np.abs(target - ages)[ages < 85] >= 5).all()  # only a face near the oldest age may barely move
    assert np.isclose(target - ages, 30).mean() > 0.1 and np.isclose(target - ages, -25).mean() > 0.1


def test_the_guide_learns_an_age_from_pixels():
    rng = np.random.default_rng(0)
    ages = rng.uniform(1, 90, 768).astype(np.float32)
    # a stand-in for faces: the brightness of a 64 px square follows the age, plus noise
    images = (30 + 1.8 * ages[:, None, None, None] + rng.normal(0, 10, (768, 64, 64, 3))).clip(0, 255)
    n = len(ages)
    data = FaceSet(images=images.astype(np.uint8), ages=ages, genders=["female"] * n, races=[None] * n, files=[""] * n)
    guide = train_guide(data, np.arange(640), epochs=4, seed=0, log=lambda _: None)
    table = reading_table(guide, data, np.arange(640, 768))
    held = np.arange(640, 768)
    with torch.no_grad():
        read = guide(data.batch(held)).numpy()
    assert np.abs(read - ages[held]).mean() < 0.5 * np.abs(ages[held] - ages[:640].mean()).mean()
    assert table[80] > table[50] > table[20]
