"""The supervised heads on the top latent: soft age labels, the regression readout, unknown labels."""

import torch

from model.condition import GENDERS, RACES
from model.heads import MAX_AGE, LatentHeads, age_label_distribution, label_indices


def test_soft_age_labels_peak_at_the_age_and_sum_to_one():
    labels = age_label_distribution(torch.tensor([3.0, 40.0, 120.0]))
    assert torch.allclose(labels.sum(1), torch.ones(3))
    assert labels.argmax(1).tolist() == [3, 40, MAX_AGE]
    assert labels[1].max() < labels[0].max()  # older labels are less certain, so wider


def test_age_readout_is_the_expected_age_under_the_head():
    logits = {"age": torch.full((1, MAX_AGE + 1), -1e9)}
    logits["age"][0, 20] = logits["age"][0, 30] = 0.0
    assert LatentHeads.age_years(logits).item() == 25.0


def test_unknown_labels_add_no_loss():
    heads = LatentHeads((4, 2, 2))
    logits = heads(torch.randn(3, 4, 2, 2))
    losses = heads.loss(
        logits,
        torch.tensor([10.0, 20.0, 30.0]),
        label_indices(["male", None, "female"], ("male", "female")),
        torch.tensor([-1, -1, -1]),
    )
    assert losses["race"].eq(0).all()
    assert losses["gender"][1] == 0 and losses["gender"][0] > 0 and losses["age"].gt(0).all()


def test_a_trajectory_with_heads_reads_age_gender_and_ethnicity_from_them(tmp_path):
    """Saved beside the weights, the heads replace the post-hoc fit's reading (and its clipping to the range)."""
    import json

    import numpy as np

    from model.age import TRAJECTORY, load_trajectory
    from model.checkpoint import save_flow
    from model.config import FlowConfig
    from model.flow.glow import Glow
    from model.heads import HEADS_FILE, save_heads

    flow = Glow(FlowConfig(resolution=8, levels=2, steps=1, width=8)).eval()
    save_flow(flow, tmp_path)
    (tmp_path / TRAJECTORY).write_text(json.dumps({"method": "conditional_prior", "age_range": [1.0, 60.0]}))
    heads = LatentHeads(flow.priors[-1].shape)
    with torch.no_grad():
        for head in (heads.age, heads.gender, heads.race):
            head.weight.zero_()
            head.bias.fill_(-30.0)
        heads.age.bias[70] = heads.gender.bias[1] = heads.race.bias[2] = 30.0
    save_heads(heads, tmp_path / HEADS_FILE)
    trajectory = load_trajectory(tmp_path, flow)
    reading = trajectory.estimate(torch.rand(2, 3, 8, 8))
    assert np.allclose(reading.ages, 60.0)  # 70 under the heads, clipped to the trajectory's range
    assert reading.genders == [GENDERS[1]] * 2
    assert reading.races == [RACES[2]] * 2
    (tmp_path / HEADS_FILE).unlink()
    assert trajectory.heads is not None and load_trajectory(tmp_path, flow).heads is None
