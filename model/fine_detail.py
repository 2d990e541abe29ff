"""Age-appropriate fine detail: the photo's own detail, finer than the flow's 64 px, rescaled with the age.

Older skin holds more fine detail than a child's (on the held-out 128 px faces, real 55-75 year-olds about
1.5 times the detail energy of 18-35 year-olds). The flow edits the 64 px face; what is finer comes from the
photo itself and would stay as young (or as old) as it was. `DetailEnergy` is the fitted curve of the
central face's fine-detail energy over age (training split only); an edit from age a to age b scales the
photo's own fine detail inside the face by the amplitude ratio sqrt(E(b) / E(a)). No change of age, no
change: a zero edit stays exact.

    python -m model.fine_detail --weights weights --data data/faces-tight   # fits, writes editor.json's key
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.masks import central_face

# editor.json key: {"ages": [...], "log_energy": [...], "max_gain": ..., "sigma": ...}
DETAIL_KEY = "fine_detail"
# the blur that separates fine detail from the rest, in pixels of a 64 px face: what is finer than the flow
SIGMA_64 = 1.0
MAX_GAIN = 2.0  # the amplitude gain of any edit stays within [1 / MAX_GAIN, MAX_GAIN]
FIT_AGES = tuple(range(0, 91, 5))
FIT_BANDWIDTH = 5.0  # years: each age's fitted energy is a Gaussian-weighted mean over neighbouring ages


def highpass(images: torch.Tensor, sigma_64: float = SIGMA_64) -> torch.Tensor:
    """The fine detail of N x 3 x S x S crops: each less its Gaussian blur of `sigma_64` pixels of a 64 px
    crop (S / 64 times as many of its own)."""
    sigma = sigma_64 * images.shape[-1] / 64
    radius = math.ceil(3 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    # separable: a row pass and a column pass, edges reflected (as torchvision's gaussian_blur, at a tenth
    # of its cost on a 256 px work crop)
    flat = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    flat = F.conv2d(flat, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    return images - flat


def central_energy(images: torch.Tensor, framing: str, sigma_64: float = SIGMA_64) -> torch.Tensor:
    """Mean square fine detail over the central face of N x 3 x S x S crops in [0, 1]: N values."""
    detail = highpass(images, sigma_64)
    region = central_face(images.shape[-1], framing).to(images.device)
    return detail.pow(2).mean(1)[:, region].mean(1)


@dataclass(frozen=True)
class DetailEnergy:
    """log E(age) of the central face's fine detail at `ages` (linear in between, flat beyond the ends)."""

    ages: tuple[float, ...]
    log_energy: tuple[float, ...]
    max_gain: float = MAX_GAIN
    sigma_64: float = SIGMA_64

    def log_energy_at(self, ages) -> np.ndarray:
        return np.interp(np.asarray(ages, np.float64), self.ages, self.log_energy)

    def gain(self, age_from: float, age_to: float) -> float:
        """The amplitude factor for the fine detail of a face taken from `age_from` to `age_to`: exactly 1
        when the two are equal."""
        if age_from == age_to:
            return 1.0
        log_ratio = 0.5 * float(self.log_energy_at(age_to) - self.log_energy_at(age_from))
        return float(np.clip(math.exp(log_ratio), 1.0 / self.max_gain, self.max_gain))

    def detail(self, crops: torch.Tensor) -> torch.Tensor:
        """The fine detail this curve rescales, of N x 3 x S x S crops in [0, 1]."""
        return highpass(crops, self.sigma_64)

    def change(self, crops: torch.Tensor, ages_from, ages_to, detail: torch.Tensor | None = None) -> torch.Tensor:
        """The change that rescales the fine detail of N x 3 x S x S crops (in [0, 1]) from each face's age
        to its target: (gain - 1) x detail, exactly zero for a face whose age does not change. `detail`: the
        crops' `detail`, when already at hand (a series of ages of the same faces)."""
        gains = [self.gain(float(a), float(b)) for a, b in zip(ages_from, ages_to)]
        out = torch.zeros_like(crops)
        moved = [i for i, g in enumerate(gains) if g != 1.0]
        if moved:
            factor = torch.tensor([gains[i] - 1.0 for i in moved], dtype=crops.dtype, device=crops.device)
            fine = self.detail(crops[moved]) if detail is None else detail[moved]
            out[moved] = factor[:, None, None, None] * fine
        return out

    def to_dict(self) -> dict:
        return {
            "ages": list(self.ages),
            "log_energy": [round(v, 5) for v in self.log_energy],
            "max_gain": self.max_gain,
            "sigma_64": self.sigma_64,
        }

    @classmethod
    def from_dict(cls, values: dict) -> DetailEnergy:
        return cls(
            tuple(float(a) for a in values["ages"]),
            tuple(float(v) for v in values["log_energy"]),
            float(values.get("max_gain", MAX_GAIN)),
            float(values.get("sigma_64", SIGMA_64)),
        )


def rising(values: np.ndarray) -> np.ndarray:
    """`values` (at increasing ages) made non-decreasing from below: each is the smallest at its age or any
    older one.

    In the training photos the youngest faces hold more fine detail than young adults' (cheeks of 0-4 year
    olds 1.5 times 18-25 year olds'), which is the photos' grain and compression rather than skin: a child's
    skin is no coarser than an adult's. Held at the adults' least below that age, the curve leaves the
    detail of an edit between childhood and young adulthood as it is, and smooths it only from older ages."""
    return np.minimum.accumulate(np.asarray(values, np.float64)[::-1])[::-1]


def fit_detail_energy(
    images: np.ndarray,
    ages,
    framing: str,
    fit_ages: tuple[float, ...] = FIT_AGES,
    bandwidth: float = FIT_BANDWIDTH,
    batch: int = 256,
) -> tuple[DetailEnergy, np.ndarray]:
    """The curve of mean log fine-detail energy over age from N x S x S x 3 uint8 crops (training faces)
    and their labelled ages, made to rise with age (`rising`); also each face's energy."""

    def crops(start: int) -> torch.Tensor:
        block = np.ascontiguousarray(images[start : start + batch])
        return torch.from_numpy(block).permute(0, 3, 1, 2).float().div_(255.0)

    energy = torch.cat([central_energy(crops(i), framing) for i in range(0, len(images), batch)])
    log_energy = np.log(energy.double().clamp_min(1e-12).numpy())
    ages = np.asarray(ages, np.float64)
    weights = np.exp(-0.5 * ((np.asarray(fit_ages, np.float64)[:, None] - ages[None]) / bandwidth) ** 2)
    curve = rising((weights * log_energy[None]).sum(1) / weights.sum(1))
    return DetailEnergy(tuple(float(a) for a in fit_ages), tuple(float(v) for v in curve)), energy.numpy()


def main(argv: list[str] | None = None) -> None:
    from model.detail import load_detail_faces

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--data", type=Path, default=Path("data/faces-tight"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    config_path = args.weights / "editor.json"
    settings = json.loads(config_path.read_text()) if config_path.exists() else {}
    framing = str(settings.get("model", {}).get("framing", "loose"))
    train = load_detail_faces(args.data, "train")  # the sources that cover 128 px without upsampling
    curve, energy = fit_detail_energy(train.images, train.ages, framing)
    settings[DETAIL_KEY] = curve.to_dict()
    config_path.write_text(json.dumps(settings, indent=2) + "\n")
    young = np.median(energy[(train.ages >= 18) & (train.ages <= 35)])
    old = np.median(energy[(train.ages >= 55) & (train.ages <= 75)])
    print(f"{len(train)} training faces ({framing}); real 55-75 over 18-35, median energy: {old / young:.2f}")
    for age in (5, 20, 30, 50, 60, 80):
        print(
            f"  gain {age:>2} -> {age + 30:>3}: {curve.gain(age, age + 30):.3f}   {age} -> {max(1, age - 25)}: "
            f"{curve.gain(age, max(1, age - 25)):.3f}"
        )
    print(f"wrote {DETAIL_KEY} into {config_path}")


if __name__ == "__main__":
    main()
