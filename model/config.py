"""The flow's architecture in one dataclass, saved as JSON beside the weights, with the age knots of its
condition vectors; what those vectors hold, and the grids of them, come from model.condition."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from model import condition


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
    age_knots: tuple[float, ...] = field(default_factory=lambda: condition.DEFAULT_AGE_KNOTS)
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
        """The length of the flow's condition vectors (0: unconditional)."""
        return condition.condition_size(self.age_knots) if self.conditional else 0

    def marginal_conditions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditions a conditional flow's likelihood averages over when none is given, in two parts
        (every row of the first plus every row of the second): `model.condition.marginal_parts`."""
        return condition.marginal_parts(self)

    def sample_conditions(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """n conditions for samples drawn without one, from `generator`: `model.condition.sample_conditions`."""
        return condition.sample_conditions(self, n, generator)

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
