"""The post-hoc edit with the finer levels carried by their priors (`details="carried"`).

The flow's priors get small random weights, as a trained flow has, so that each split prior's mean and
scale depend on the coarser latent (its context) and on the age condition.
"""

import numpy as np
import pytest
import torch

from model.age import PosthocTrajectory, load_trajectory, save_trajectory
from model.condition import condition_vector
from model.config import FlowConfig
from model.flow.glow import Glow

SIDE = 16


@pytest.fixture(scope="module")
def flow() -> Glow:
    return small_flow()


def small_flow() -> Glow:
    """A two-level flow on 16 px faces whose priors have small random weights."""
    torch.manual_seed(0)
    flow = Glow(FlowConfig(resolution=SIDE, levels=2, steps=2, width=16)).eval()
    faces = torch.rand(64, 3, SIDE, SIDE)
    with torch.no_grad():
        flow.log_prob(faces, condition_vector(flow.config, np.full(64, 30.0)))  # ActNorm's initialization
        for prior in flow.priors:
            for parameter in prior.parameters():
                parameter.add_(0.05 * torch.randn_like(parameter))
    return flow


def path_tensors(flow: Glow, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    knots = len(flow.config.age_knots)
    tensors = {
        f"level{i}_age": 0.3 * torch.randn(knots, *shape, generator=generator)
        for i, shape in enumerate(flow.latent_shapes())
    }
    dim = sum(int(np.prod(shape)) for shape in flow.latent_shapes())
    tensors.update(
        latent_mean=torch.zeros(dim),
        latent_std=torch.ones(dim),
        age_weights=0.01 * torch.randn(dim, generator=generator),
        age_bias=torch.tensor([35.0]),
    )
    return tensors


def faces(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("details", PosthocTrajectory.DETAILS)
def test_an_edit_to_the_current_age_gives_the_face_back(flow, details):
    trajectory = PosthocTrajectory(flow, path_tensors(flow), [1.0, 1.0], keep_skin_tone=False, details=details)
    x = faces()
    reading = trajectory.estimate(x)
    back = trajectory.move(x, reading, reading.ages)
    assert (back - x).abs().max().item() < 1e-4


def test_carried_details_follow_the_moved_top_level_under_the_target_age(flow):
    tensors = path_tensors(flow)
    carried = PosthocTrajectory(flow, tensors, [0.0, 1.0], keep_skin_tone=False, details="carried")
    kept = PosthocTrajectory(flow, tensors, [0.0, 1.0], keep_skin_tone=False, details="kept")
    x = faces()
    reading = carried.estimate(x)
    target = np.clip(reading.ages + 30.0, 1.0, 90.0)
    with torch.no_grad():
        after_carried = flow.flow_forward(carried.move(x, reading, target) - 0.5)
        after_kept = flow.encode(kept.move(x, reading, target))
        current = condition_vector(flow.config, reading.ages)
        target_condition = condition_vector(flow.config, target)
        eps_before = flow.standardize_latents(reading.latents, reading.contexts, current)
        eps_after = flow.standardize_latents(after_carried[0], after_carried[1], target_condition)
    # the top level moved the same way in both; the finer level keeps its place under its prior only when
    # carried, and then it is a different latent from the one kept as it was
    assert torch.allclose(after_carried[0][1], after_kept[1], atol=1e-3)
    assert torch.allclose(eps_after[0], eps_before[0], atol=1e-3)
    assert torch.allclose(after_kept[0], reading.latents[0], atol=1e-3)
    moved = (after_carried[0][0] - reading.latents[0]).abs().mean().item()
    print(f"the finer latent moved by {moved:.3f} on average when carried")
    assert moved > 0.02


def test_the_details_setting_is_saved_and_checked(flow, tmp_path):
    trajectory = PosthocTrajectory(flow, path_tensors(flow), [0.5, 2.0], details="carried")
    save_trajectory(tmp_path, trajectory, rank=2)
    loaded = load_trajectory(tmp_path, flow)
    assert isinstance(loaded, PosthocTrajectory) and loaded.details == "carried"
    assert loaded.level_strengths == [0.5, 2.0]
    with pytest.raises(ValueError, match="details"):
        PosthocTrajectory(flow, path_tensors(flow), details="redrawn")
