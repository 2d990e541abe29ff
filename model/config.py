"""The flow's architecture in one dataclass, saved as JSON beside the weights."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Ages at which the prior's mean and scale are learned; in between they are interpolated linearly, so the
# age trajectory is a smooth, piecewise-linear path through latent space rather than one straight line.
DEFAULT_AGE_KNOTS = (0, 4, 9, 15, 21, 28, 36, 45, 55, 65, 75, 90)
GENDERS = ("male", "female")
RACES = ("white", "black", "asian", "indian", "other")


@dataclass
class FlowConfig:
    resolution: int = 64
    channels: int = 3
    levels: int = 3
    steps: int = 8
    width: int = 128
    coupling: str = "additive"  # "affine" (scale = sigmoid(h + 2)) or "additive"
    mixing: str = "conv1x1"  # "conv1x1" (Glow) or "reverse" (RealNVP's fixed channel reversal)
    mask: str = "channel"  # "channel" (Glow), "checkerboard", or "realnvp" (checkerboard, then channel)
    n_bits: int = 5
    conditional: bool = True  # priors conditioned on age, gender and ethnicity
    age_knots: tuple[float, ...] = field(default_factory=lambda: DEFAULT_AGE_KNOTS)
    # capacity per level, finest first; empty: `width` and `steps` at every level
    level_widths: tuple[int, ...] = ()
    level_steps: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.resolution % (2**self.levels):
            raise ValueError(f"resolution {self.resolution} is not divisible by 2**levels")
        if self.coupling not in ("affine", "additive"):
            raise ValueError(f"unknown coupling {self.coupling!r}")
        if self.mixing not in ("conv1x1", "reverse"):
            raise ValueError(f"unknown mixing {self.mixing!r}")
        if self.mask not in ("channel", "checkerboard", "realnvp"):
            raise ValueError(f"unknown mask {self.mask!r}")
        self.age_knots = tuple(float(a) for a in self.age_knots)
        self.level_widths = tuple(int(w) for w in self.level_widths)
        self.level_steps = tuple(int(k) for k in self.level_steps)
        for name, values in (("level_widths", self.level_widths), ("level_steps", self.level_steps)):
            if values and len(values) != self.levels:
                raise ValueError(f"{name} has {len(values)} entries for {self.levels} levels")

    def width_at(self, level: int) -> int:
        """Hidden channels of the coupling networks at `level` (0 is the finest)."""
        return self.level_widths[level] if self.level_widths else self.width

    def steps_at(self, level: int) -> int:
        return self.level_steps[level] if self.level_steps else self.steps

    @classmethod
    def realnvp(cls, **overrides) -> FlowConfig:
        """RealNVP: affine masked couplings with a fixed channel reversal between them."""
        return cls(**{"coupling": "affine", "mixing": "reverse", "mask": "realnvp", **overrides})

    @property
    def condition_dim(self) -> int:
        return len(self.age_knots) + len(GENDERS) + len(RACES) if self.conditional else 0

    @property
    def dimensions(self) -> int:
        return self.channels * self.resolution**2

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: Path) -> FlowConfig:
        return cls(**json.loads(Path(path).read_text()))
