"""The supervised heads on the top latent: soft age labels, the regression readout, unknown labels."""

import torch

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
