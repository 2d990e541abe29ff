"""The independent age judges of bench.edit_quality: two estimators of age and gender, built apart from the
flow and from each other, trained on disjoint halves of the training split only.

- "cnn64": a plain strided CNN with batch norm on 64 px faces (the 128 px crops, area-averaged), trained on
  half "a" of the training faces.
- "resnet128": a residual network with group norm on the 128 px crops themselves (so it sees the fine
  detail the other cannot), trained on half "b".

A face belongs to half "a" or "b" by a hash of its photo's name, so the halves stay the same whatever else
changes. Each judge is kept in the --estimator folder as <name>.safetensors + <name>.json and reused while
the data set, its architecture and its training are the same; nothing is unpickled.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from model.data import FaceSet, age_balance_weights, load_faces
from model.transport import subset


def _conv(c_in: int, c_out: int, stride: int, kernel: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class AgeEstimator(nn.Module):
    """Age in years and gender (logit of female) from an aligned face at 64 px; it shares nothing with the
    flow."""

    side = 64
    age_scale = 20.0

    def __init__(self, mean_age: float = 35.0) -> None:
        super().__init__()
        widths = (3, 24, 48, 96, 192)
        layers = [m for c_in, c_out in zip(widths, widths[1:]) for m in _conv(c_in, c_out, 2)]
        head = [*_conv(widths[-1], 256, 1, kernel=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, 2)]
        self.net = nn.Sequential(*layers, *head)
        self.register_buffer("mean_age", torch.tensor(float(mean_age)))

    def forward(self, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if faces.shape[-1] != self.side:
            faces = F.interpolate(faces, size=self.side, mode="area")
        out = self.net(((faces - 0.5) / 0.25).contiguous(memory_format=torch.channels_last))
        return self.mean_age + self.age_scale * out[:, 0], out[:, 1]


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with group norm and SiLU, plus the input (through a strided 1x1 convolution
    where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.GroupNorm(8, c_out),
            nn.SiLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.GroupNorm(8, c_out),
        )
        self.skip = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.GroupNorm(8, c_out))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.body(x) + self.skip(x))


class ResidualAgeEstimator(nn.Module):
    """Age in years and gender (logit of female) from an aligned face at 128 px: a small residual network,
    a different architecture from AgeEstimator's and at twice its resolution."""

    side = 128
    age_scale = 20.0

    def __init__(self, mean_age: float = 35.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 5, 2, 2, bias=False),
            nn.GroupNorm(8, 32),
            nn.SiLU(),
            nn.MaxPool2d(2),
            ResidualBlock(32, 48, 1),
            ResidualBlock(48, 96, 2),
            ResidualBlock(96, 160, 2),
            ResidualBlock(160, 256, 2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Dropout(0.2),
            nn.Linear(256, 2),
        )
        self.register_buffer("mean_age", torch.tensor(float(mean_age)))

    def forward(self, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if faces.shape[-1] != self.side:
            faces = F.interpolate(faces, size=self.side, mode="bilinear", antialias=True, align_corners=False)
        out = self.net(((faces - 0.5) / 0.25).contiguous(memory_format=torch.channels_last))
        return self.mean_age + self.age_scale * out[:, 0], out[:, 1]


# name -> (architecture, the half of the training split it learns from, the crop side it is trained on,
# its epochs: the residual network's cost 4 times as much each on one core, about 4 minutes)
JUDGES: dict[str, tuple[Callable[..., nn.Module], str, int, int]] = {
    "cnn64": (AgeEstimator, "a", 128, 10),
    "resnet128": (ResidualAgeEstimator, "b", 128, 6),
}


def training_half(files: list[str], half: str) -> np.ndarray:
    """Indices of the faces whose photo name falls in half "a" or "b" (a hash of the name, fixed)."""
    bit = {"a": 0, "b": 1}[half]
    return np.array([i for i, name in enumerate(files) if hashlib.sha256(name.encode()).digest()[0] % 2 == bit])


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """N x S x S x 3 uint8 -> N x 3 x S x S floats in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def judge(estimator: nn.Module, images: np.ndarray, batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The estimator's ages and P(female) for N x S x S x 3 uint8 faces."""
    ages, female = [], []
    for start in range(0, len(images), batch):
        age, logit = estimator(to_tensor(images[start : start + batch]))
        ages.append(age.numpy())
        female.append(torch.sigmoid(logit).numpy())
    return np.concatenate(ages).astype(np.float64), np.concatenate(female).astype(np.float64)


def reading_curve(labels: np.ndarray, readings: np.ndarray, sigma: float = 3.0):
    """A judge's mean reading of real faces as a function of their labelled age (Gaussian-weighted over
    neighbouring ages): how much older a face truly 30 years older reads, for comparison with edits."""
    labels, readings = np.asarray(labels, np.float64), np.asarray(readings, np.float64)

    def curve(ages) -> np.ndarray:
        w = np.exp(-0.5 * ((np.asarray(ages, np.float64)[:, None] - labels[None]) / sigma) ** 2)
        return (w * readings[None]).sum(1) / w.sum(1)

    return curve


def calibration(labels: np.ndarray, readings: np.ndarray) -> dict:
    """Mean reading per age band of real held-out faces, and the slope of reading on labelled age."""
    bands = ((0, 5), (5, 15), (15, 25), (25, 35), (35, 45), (45, 55), (55, 65), (65, 75), (75, 85), (85, 120))
    out = {"slope": float(np.polyfit(labels, readings, 1)[0]), "bands": {}}
    for low, high in bands:
        members = (labels >= low) & (labels < high)
        if members.any():
            out["bands"][f"{low}-{high - 1}"] = {"faces": int(members.sum()), "read": float(readings[members].mean())}
    return out


def train_estimator(name: str, train: FaceSet, epochs: int, seed: int, batch: int = 64) -> nn.Module:
    """One judge trained on `train` (its crops at any side; the judge resamples them to its own)."""
    architecture = JUDGES[name][0]
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = architecture(float(train.ages.mean())).to(memory_format=torch.channels_last)
    ages = torch.from_numpy(train.ages).float()
    weights = age_balance_weights(train.ages)
    female = torch.tensor([g == "female" for g in train.genders], dtype=torch.float32)
    steps_per_epoch = len(train) // batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * steps_per_epoch)
    side = model.side
    # a shift of a few pixels (3 of 64): the aligner's framing varies about that much between photos
    jitter = 3 * side // 64
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(train))
        for step in range(steps_per_epoch):
            idx = np.sort(order[step * batch : (step + 1) * batch])
            x = train.batch(idx)
            if x.shape[-1] != side:
                x = F.interpolate(x, size=side, mode="area")
            x = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, x.flip(3), x)
            dx, dy = (int(v) for v in rng.integers(0, 2 * jitter + 1, 2))
            x = F.pad(x, (jitter,) * 4, mode="replicate")[:, :, dy : dy + side, dx : dx + side]
            age, logit = model(x)
            age_loss = F.smooth_l1_loss(age, ages[idx], beta=2.0, reduction="none")
            loss = (age_loss * weights[idx]).mean() / 10 + F.binary_cross_entropy_with_logits(logit, female[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        print(f"  judge {name} epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.3f}", flush=True)
    return model.eval()


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Written beside, then renamed: an evaluation running at the same time never reads half a file."""
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))
    tmp.replace(path)


def data_fingerprint(data: Path) -> str:
    return hashlib.sha256((data / "labels.csv").read_bytes()).hexdigest()[:16]


def train_mean_age(data: Path) -> float:
    with open(data / "labels.csv", newline="") as f:
        return float(np.mean([float(r["age"]) for r in csv.DictReader(f) if r["split"] == "train"]))


@functools.cache
def train_faces(data: Path, side: int = 64) -> FaceSet:
    return load_faces(data, side, "train")


def load_or_train_judge(name: str, folder: Path, data: Path, epochs: int | None = None) -> tuple[nn.Module, dict]:
    """The judge `name` kept in `folder` when it has this architecture and was trained on this data set's
    half for as many epochs (None: its own number); else a new one, trained and saved there."""
    architecture, half, side, own_epochs = JUDGES[name]
    epochs = own_epochs if epochs is None else epochs
    meta_path, weights_path = folder / f"{name}.json", folder / f"{name}.safetensors"
    shapes = repr([(k, tuple(v.shape)) for k, v in architecture().state_dict().items()])
    wanted = {
        "judge": name,
        "data": data_fingerprint(data),
        "half": half,
        "epochs": epochs,
        "seed": 0,
        "age_balanced": True,
        "architecture": hashlib.sha256(shapes.encode()).hexdigest()[:16],
    }
    if meta_path.exists() and weights_path.exists():
        meta = json.loads(meta_path.read_text())
        if all(meta.get(k) == v for k, v in wanted.items()):
            model = architecture()
            model.load_state_dict(load_file(str(weights_path)))
            return model.to(memory_format=torch.channels_last).eval(), meta
    faces = train_faces(data, side)
    train = subset(faces, training_half(faces.files, half))
    print(f"training judge {name} on {len(train)} train faces (half {half}), {epochs} epochs", flush=True)
    start, cpu_start = time.perf_counter(), time.process_time()
    model = train_estimator(name, train, epochs, seed=0)
    meta = {
        **wanted,
        "train_faces": len(train),
        "train_seconds": round(time.perf_counter() - start, 1),
        "train_cpu_seconds": round(time.process_time() - cpu_start, 1),
    }
    folder.mkdir(parents=True, exist_ok=True)
    save_tensors(model.state_dict(), weights_path)
    meta_path.write_text(json.dumps(meta, indent=2))
    return model, meta


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/faces-loose"))
    parser.add_argument("--estimator", type=Path, default=Path("data/bench/age_estimator"))
    parser.add_argument("--epochs", type=int, default=None, help="for every judge (default: each its own)")
    parser.add_argument("--judge", choices=sorted(JUDGES), action="append", default=None)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    heldout = load_faces(args.data, 128, "heldout")
    for name in args.judge or sorted(JUDGES):
        model, meta = load_or_train_judge(name, args.estimator, args.data, args.epochs)
        ages, female = judge(model, heldout.images)
        accuracy = np.mean((female > 0.5) == np.array([g == "female" for g in heldout.genders]))
        print(
            f"{name}: {meta['train_faces']} train faces (half {meta['half']}), {meta['train_seconds']:.0f} s; "
            f"held-out MAE {np.mean(np.abs(ages - heldout.ages)):.2f} y, gender accuracy {accuracy:.3f} "
            f"({len(heldout)} faces)"
        )


if __name__ == "__main__":
    main()
