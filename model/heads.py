"""Supervised readouts of the flow's top latent: age, gender and ethnicity, trained jointly with the flow.

Maximum likelihood alone cannot see age (a label is worth at most ~6.5 bits per face, 0.0005 bits/dim at
64 px), so the training loss adds these heads' cross-entropy, weighted far above that natural scale, which
makes age a linear readout of the top latent. Every head is linear, so the direction that moves the age
reading is the same for every face.

Age is read as a distribution over one-year bins, 0 to `MAX_AGE` (trained on a Gaussian around the label,
wider for older faces, whose labels are less certain), and its expectation is the regression readout.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from model.condition import GENDERS, RACES

MAX_AGE = 90
HEADS_FILE = "heads.safetensors"
AGE_BINS = torch.arange(MAX_AGE + 1, dtype=torch.float32)


def age_label_distribution(ages: torch.Tensor) -> torch.Tensor:
    """N ages -> N x (MAX_AGE + 1) soft labels: a Gaussian of sd max(1.5, 0.08 * age) years, renormalized."""
    a = ages.float().clamp(0, MAX_AGE)[:, None]
    sd = (0.08 * a).clamp(min=1.5)
    logits = -0.5 * ((AGE_BINS.to(ages.device)[None] - a) / sd) ** 2
    return torch.softmax(logits, 1)


class LatentHeads(nn.Module):
    """Linear heads on the flattened top latent (C x H x W)."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.shape = tuple(shape)
        features = math.prod(shape)
        self.age = nn.Linear(features, MAX_AGE + 1)
        self.gender = nn.Linear(features, len(GENDERS))
        self.race = nn.Linear(features, len(RACES))

    def forward(self, top: torch.Tensor) -> dict[str, torch.Tensor]:
        h = top.flatten(1)
        return {"age": self.age(h), "gender": self.gender(h), "race": self.race(h)}

    @staticmethod
    def age_years(logits: dict[str, torch.Tensor]) -> torch.Tensor:
        """The regression readout: the expected age under the age head, in years."""
        return torch.softmax(logits["age"], 1) @ AGE_BINS.to(logits["age"].device)

    def loss(
        self, logits: dict[str, torch.Tensor], ages: torch.Tensor, genders: torch.Tensor, races: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Per-face losses in nats. `genders`/`races`: class indices, -1 where unknown (no loss there)."""
        age = -(age_label_distribution(ages) * F.log_softmax(logits["age"], 1)).sum(1)
        # the regression readout, in decades, keeps the distribution's mean on the label
        age = age + (self.age_years(logits) - ages.float().clamp(0, MAX_AGE)).abs() / 10.0
        return {
            "age": age,
            "gender": _masked_cross_entropy(logits["gender"], genders),
            "race": _masked_cross_entropy(logits["race"], races),
        }


def _masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    known = target >= 0
    return F.cross_entropy(logits, target.clamp(min=0), reduction="none") * known


def label_indices(values: list[str | None], names: tuple[str, ...]) -> torch.Tensor:
    """Class indices of `values` in `names`, -1 for unknown values."""
    return torch.tensor([names.index(v) if v in names else -1 for v in values], dtype=torch.long)


def save_heads(heads: LatentHeads, path) -> None:
    tmp = f"{path}.tmp"
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()},
        tmp,
        metadata={"shape": ",".join(map(str, heads.shape))},
    )
    os.replace(tmp, path)


def load_heads(path, device: str | torch.device = "cpu") -> LatentHeads:
    with safe_open(str(path), "pt") as f:
        shape = tuple(int(v) for v in f.metadata()["shape"].split(","))
    heads = LatentHeads(shape)
    heads.load_state_dict(load_file(str(path), device="cpu"))
    return heads.to(device).eval()
