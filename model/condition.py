"""The condition vector of the flow's priors: age as piecewise-linear weights over the age knots, then
gender and ethnicity as one-hot blocks. An unknown gender or ethnicity is the uniform mixture. The label
lists and the grids of labels live here; the flow takes the vectors as opaque tensors."""

from __future__ import annotations

import itertools
from typing import Protocol

import torch

# Ages at which the prior's mean and scale are learned; in between they are interpolated linearly, so the
# age trajectory is a smooth, piecewise-linear path through latent space rather than one straight line.
DEFAULT_AGE_KNOTS = (0, 4, 9, 15, 21, 28, 36, 45, 55, 65, 75, 90)
# the labels in the order of their one-hot blocks, which trained priors and heads depend on
GENDERS = ("male", "female")
RACES = ("white", "black", "asian", "indian", "other")
# every (gender, ethnicity) pair, in the order of `condition_grid`
PAIRS = tuple(itertools.product(GENDERS, RACES))
# the ages a face's likelihood is averaged over when no condition is given (with every pair), and the ages
# drawn for samples without a condition
MARGINAL_AGES = tuple(range(1, 91, 3))
SAMPLE_AGES = tuple(range(5, 81))


class WithAgeKnots(Protocol):
    """What the condition code reads of a flow's config (`model.config.FlowConfig`): its age knots."""

    age_knots: tuple[float, ...]


def age_weights(ages: torch.Tensor, knots: tuple[float, ...]) -> torch.Tensor:
    """N ages -> N x len(knots) hat-function weights that sum to 1 (ages beyond the knots are clamped)."""
    knots_t = torch.tensor(knots, dtype=torch.float32, device=ages.device)
    a = ages.float().clamp(knots[0], knots[-1])[:, None]
    upper = torch.searchsorted(knots_t, a.squeeze(1).contiguous(), right=True).clamp(1, len(knots) - 1)
    lo, hi = knots_t[upper - 1], knots_t[upper]
    t = ((a.squeeze(1) - lo) / (hi - lo)).clamp(0, 1)
    weights = torch.zeros(len(ages), len(knots), device=ages.device)
    weights.scatter_(1, (upper - 1)[:, None], (1 - t)[:, None])
    weights.scatter_add_(1, upper[:, None], t[:, None])
    return weights


def condition_size(age_knots: tuple[float, ...]) -> int:
    """The length of a condition vector: one weight per age knot, then the gender and ethnicity blocks."""
    return len(age_knots) + len(GENDERS) + len(RACES)


def one_hot(values: list[str | None], names: tuple[str, ...]) -> torch.Tensor:
    out = torch.full((len(values), len(names)), 1.0 / len(names))
    for i, v in enumerate(values):
        if v in names:
            out[i] = 0.0
            out[i, names.index(v)] = 1.0
    return out


def condition_vector(config: WithAgeKnots, ages, genders=None, races=None) -> torch.Tensor:
    """Condition vectors for N faces. `genders`/`races` are lists of names, None entries for unknown."""
    ages = torch.as_tensor(ages, dtype=torch.float32).reshape(-1)
    n = len(ages)
    genders = list(genders) if genders is not None else [None] * n
    races = list(races) if races is not None else [None] * n
    return torch.cat([age_weights(ages, config.age_knots), one_hot(genders, GENDERS), one_hot(races, RACES)], 1)


def condition_grid(config: WithAgeKnots, ages) -> tuple[torch.Tensor, list[tuple[float, str, str]]]:
    """Every combination of the given ages with each gender and ethnicity, and what each row means."""
    combos = list(itertools.product([float(a) for a in ages], GENDERS, RACES))
    vectors = condition_vector(config, [c[0] for c in combos], [c[1] for c in combos], [c[2] for c in combos])
    return vectors, combos


def condition_parts(config: WithAgeKnots, ages, pairs=PAIRS) -> tuple[torch.Tensor, torch.Tensor]:
    """Condition vectors split in two: one per age (the age block; A x K) and one per (gender, ethnicity)
    pair (the other blocks; J x K). Every condition_vector(age, gender, ethnicity) is a row of the first
    plus a row of the second, which `Glow.condition_grid_log_likelihoods` evaluates without forming them."""
    n_ages = len(config.age_knots)
    age_rows = condition_vector(config, ages)
    age_rows[:, n_ages:] = 0.0
    other_rows = condition_vector(config, [0.0] * len(pairs), [g for g, _ in pairs], [r for _, r in pairs])
    other_rows[:, :n_ages] = 0.0
    return age_rows, other_rows


def marginal_parts(config: WithAgeKnots) -> tuple[torch.Tensor, torch.Tensor]:
    """`condition_parts` of the uniform grid a conditional flow's likelihood averages over when no condition
    is given: MARGINAL_AGES crossed with every gender and ethnicity."""
    return condition_parts(config, MARGINAL_AGES)


def sample_conditions(config: WithAgeKnots, n: int, generator: torch.Generator) -> torch.Tensor:
    """n condition vectors drawn uniformly from SAMPLE_AGES crossed with every gender and ethnicity."""
    grid, _ = condition_grid(config, SAMPLE_AGES)
    return grid[torch.randint(len(grid), (n,), generator=generator)]
