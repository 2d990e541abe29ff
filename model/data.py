"""Loading an aligned face set written by `python -m model.prepare`."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.condition import condition_vector
from model.config import FlowConfig


@dataclass
class FaceSet:
    images: np.ndarray  # N x S x S x 3 uint8
    ages: np.ndarray  # N float32
    genders: list[str]
    races: list[str | None]  # None where the source has no ethnicity label
    files: list[str]
    sources: list[str] = field(default_factory=list)  # the source folder of each face, where known

    def __len__(self) -> int:
        return len(self.ages)

    def batch(self, indices, device: str | torch.device = "cpu") -> torch.Tensor:
        """Images at `indices` as N x 3 x S x S floats in [0, 1]."""
        array = np.ascontiguousarray(self.images[np.asarray(indices)])
        return torch.from_numpy(array).to(device).permute(0, 3, 1, 2).float().div_(255.0)

    def conditions(self, config: FlowConfig, indices) -> torch.Tensor:
        idx = np.asarray(indices)
        return condition_vector(config, self.ages[idx], [self.genders[i] for i in idx], [self.races[i] for i in idx])


def load_faces(folder: Path, side: int = 64, split: str | None = "train", limit: int = 0) -> FaceSet:
    """The faces of one split ("train", "heldout", or None for all) at one resolution."""
    folder = Path(folder)
    images = np.load(folder / f"faces_{side}.npy", mmap_mode="r")
    with open(folder / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if split is None or r["split"] == split]
    if limit:
        rows = rows[:limit]
    index = np.array([int(r["index"]) for r in rows], dtype=np.int64)
    return FaceSet(
        images=np.asarray(images[index]),
        ages=np.array([float(r["age"]) for r in rows], np.float32),
        genders=[r["gender"] for r in rows],
        races=[r["race"] or None for r in rows],
        files=[r["file"] for r in rows],
        sources=[r.get("source", "") for r in rows],
    )


def age_balance_weights(ages: np.ndarray, bin_years: float = 5.0) -> torch.Tensor:
    """Per-face loss weights, 1 / sqrt(share of the face's 5-year age bin), mean 1. Trained without them,
    an estimator reads the rare old (and very young) faces towards the mean age: real 80-year-olds read
    about 53. With them it reads the whole range more evenly, so that it can tell how much older an edit
    looks."""
    bins = (np.asarray(ages) // bin_years).astype(int)
    counts = np.bincount(bins)
    weights = 1.0 / np.sqrt(counts[bins].astype(np.float64))
    return torch.from_numpy(weights / weights.mean()).float()
