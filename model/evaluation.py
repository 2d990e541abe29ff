"""Held-out figures of a flow and its heads, and sample grids: shared by training, export and the tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from model.condition import GENDERS, RACES
from model.data import FaceSet
from model.flow.glow import Glow
from model.heads import LatentHeads, label_indices


@torch.no_grad()
def evaluate_bits_per_dim(model: Glow, faces: FaceSet, device, limit: int = 0, batch: int = 100) -> float:
    """Mean held-out bits/dim as Glow defines it (uniform dequantization noise, here from a fixed seed so
    that every evaluation sees the same noise), conditioned on each face's labels."""
    n = len(faces) if not limit else min(limit, len(faces))
    if n == 0:  # a data set prepared without a held-out split
        return float("nan")
    model.eval()
    noise = torch.Generator().manual_seed(0)
    total = 0.0
    for start in range(0, n, batch):
        idx = np.arange(start, min(n, start + batch))
        cond = faces.conditions(model.config, idx).to(device) if model.config.conditional else None
        x = faces.batch(idx, device)
        total += model(model.quantize(x, torch.rand(x.shape, generator=noise).to(device)), cond).sum().item()
    model.train()
    return total / n


@torch.no_grad()
def evaluate_heads(model: Glow, heads: LatentHeads, faces: FaceSet, device, limit: int = 0, batch: int = 100) -> dict:
    """Held-out readouts of the heads on the top latent of each face (bin centres, no noise): the mean
    absolute age error in years and the gender and ethnicity accuracy (over faces with that label)."""
    n = len(faces) if not limit else min(limit, len(faces))
    if n == 0:
        return {}
    was_training = model.training
    model.eval()
    heads.eval()
    ages, genders, races = [], [], []
    for start in range(0, n, batch):
        idx = np.arange(start, min(n, start + batch))
        logits = heads(model.flow_forward(model.quantize(faces.batch(idx, device)))[0][-1])
        ages.append(LatentHeads.age_years(logits).cpu())
        genders.append(logits["gender"].argmax(1).cpu())
        races.append(logits["race"].argmax(1).cpu())
    model.train(was_training)
    heads.train(was_training)
    true_gender = label_indices(faces.genders[:n], GENDERS)
    true_race = label_indices(faces.races[:n], RACES)

    def accuracy(predicted: torch.Tensor, truth: torch.Tensor) -> float:
        known = truth >= 0
        return float((predicted[known] == truth[known]).float().mean()) if known.any() else float("nan")

    return {
        "heldout_age_mae": float((torch.cat(ages) - torch.from_numpy(faces.ages[:n]).clamp(max=90)).abs().mean()),
        "heldout_gender_acc": accuracy(torch.cat(genders), true_gender),
        "heldout_race_acc": accuracy(torch.cat(races), true_race),
    }


def save_grid(images: torch.Tensor, path: Path, columns: int = 8) -> None:
    from PIL import Image

    images = images.clamp(0, 1).mul(255).round().byte().cpu().permute(0, 2, 3, 1).numpy()
    n, h, w, c = images.shape
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * h, columns * w, c), np.uint8)
    for i, im in enumerate(images):
        grid[(i // columns) * h : (i // columns + 1) * h, (i % columns) * w : (i % columns + 1) * w] = im
    Image.fromarray(grid).save(path)
