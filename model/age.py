"""Age trajectories: how a face moves through the flow's latent space as it ages.

Two ways, with one interface (`estimate` reads each face's age from its latents, `move` takes faces to
target ages):

- `ConditionalPriorTrajectory` (learned during training): the flow's priors are conditioned on age,
  gender and ethnicity. The current age is the one under which the face is most likely; an edit
  encodes the face into standardized latents under its current condition and decodes them under the
  target age, with gender and ethnicity held at the values that explain the face best.
- `PosthocTrajectory` (fitted afterwards, by `model.age_fit`): a least-squares fit of each level's raw
  latents on the age knots' piecewise-linear weights (smoothed per-age means) with gender and ethnicity
  as covariates, and a ridge regression of age on the latents to read the current age. With
  `details="carried"` only the top latent moves along the path directly; each finer level keeps its
  standardized latent under its prior, whose mean and scale follow the edited coarser levels and the
  target age, so the detail is redrawn to suit the older or younger face (plus that level's own share of
  the path).

Where the flow was trained with supervised heads on its top latent (model.heads, `heads.safetensors` beside
the weights), those heads read the current age, gender and ethnicity for every trajectory.

`level_strengths` (finest level first; a post-hoc trajectory may have `younger_level_strengths` for edits to
a younger age) scale how far each level moves, so an edit can leave the finest
detail, which carries identity, more or less alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from model.condition import GENDERS, PAIRS, RACES, age_weights, condition_parts, condition_vector
from model.flow.glow import Glow
from model.heads import HEADS_FILE, LatentHeads, load_heads

TRAJECTORY = "age_trajectory.json"
POSTHOC_WEIGHTS = "age_posthoc.safetensors"


@dataclass
class AgeReading:
    ages: np.ndarray  # N, years
    genders: list[str | None]
    races: list[str | None]
    latents: list[torch.Tensor]  # the encoding the ages were read from, reused by `move`
    contexts: list[torch.Tensor | None]


class AgeTrajectory:
    name = "base"

    def __init__(self, flow: Glow, level_strengths=None, age_range=(1.0, 90.0), keep_skin_tone=True) -> None:
        self.flow = flow
        # the supervised readouts of the top latent, trained with the flow (model.heads); when present, they
        # read the current age, gender and ethnicity in place of a post-hoc fit
        self.heads: LatentHeads | None = None
        self.keep_skin_tone = bool(keep_skin_tone)
        n_levels = len(flow.priors)
        self.level_strengths = [float(s) for s in (level_strengths or [1.0] * n_levels)]
        if len(self.level_strengths) != n_levels:
            raise ValueError(f"need {n_levels} level strengths, got {len(self.level_strengths)}")
        self.age_range = (float(age_range[0]), float(age_range[1]))

    @torch.no_grad()
    def estimate(self, faces: torch.Tensor) -> AgeReading:
        """The age, gender and ethnicity of N aligned faces (N x 3 x S x S in [0, 1])."""
        latents, contexts, _ = self.flow.flow_forward(faces - 0.5)
        return self.read(latents, contexts)

    def read(self, latents: list[torch.Tensor], contexts: list) -> AgeReading:
        """`estimate` from the faces' encoding (`Glow.flow_forward`), when it is already made."""
        raise NotImplementedError

    def move(self, faces: torch.Tensor, reading: AgeReading, target_ages: np.ndarray, with_bits: bool = False):
        """The faces taken from their reading's ages to `target_ages`; with `with_bits`, also the moved
        faces' exact bits/dim under the flow (`Glow.exact_bits_per_dim`), from the same pass."""
        raise NotImplementedError


class ConditionalPriorTrajectory(AgeTrajectory):
    name = "conditional_prior"
    coarse_ages = tuple(range(0, 91, 5))

    @torch.no_grad()
    def read(self, latents: list[torch.Tensor], contexts: list) -> AgeReading:
        """Gender and ethnicity: the pair under which the face is most likely, summed over the coarse ages;
        then the age: the most likely of the whole years in the age range under that pair."""
        flow = self.flow
        device, count = latents[0].device, latents[0].shape[0]
        if self.heads is not None:
            return heads_reading(self.heads, latents, contexts, self.age_range)
        fine_ages = np.arange(self.age_range[0], self.age_range[1] + 0.5, 1.0)
        ages = np.concatenate([np.asarray(self.coarse_ages, np.float64), fine_ages])
        age_rows, other_rows = condition_parts(flow.config, ages)
        table = flow.condition_grid_log_likelihoods(latents, contexts, age_rows.to(device), other_rows.to(device))
        coarse, fine = table[:, :, : len(self.coarse_ages)], table[:, :, len(self.coarse_ages) :]
        best = torch.logsumexp(coarse, 2).argmax(1)
        found = fine[torch.arange(count, device=device), best].argmax(1)
        genders = [PAIRS[b][0] for b in best.tolist()]
        races = [PAIRS[b][1] for b in best.tolist()]
        return AgeReading(fine_ages[found.cpu().numpy()], genders, races, latents, contexts)

    def _conditions(self, ages, reading: AgeReading) -> torch.Tensor:
        return condition_vector(self.flow.config, ages, reading.genders, reading.races)

    @torch.no_grad()
    def move(self, faces: torch.Tensor, reading: AgeReading, target_ages: np.ndarray, with_bits: bool = False):
        device = faces.device
        current = self._conditions(reading.ages, reading).to(device)
        target = self._conditions(target_ages, reading).to(device)
        eps = self.flow.standardize_latents(reading.latents, reading.contexts, current)
        per_level = [current + s * (target - current) for s in self.level_strengths]
        return self.flow.generate(eps, per_level, with_bits=with_bits)


class PosthocTrajectory(AgeTrajectory):
    name = "posthoc"
    DETAILS = ("kept", "carried")

    def __init__(
        self,
        flow: Glow,
        tensors: dict[str, torch.Tensor],
        level_strengths=None,
        age_range=(1.0, 90.0),
        keep_skin_tone=True,
        details: str = "kept",
        younger_level_strengths=None,
    ) -> None:
        super().__init__(flow, level_strengths, age_range, keep_skin_tone)
        if details not in self.DETAILS:
            raise ValueError(f"details must be one of {', '.join(self.DETAILS)}, got {details!r}")
        self.tensors = tensors
        self.details = details
        # the strengths of edits to a younger age, where they differ (None: `level_strengths` both ways)
        self.younger_level_strengths = (
            [float(v) for v in younger_level_strengths] if younger_level_strengths is not None else None
        )
        if self.younger_level_strengths is not None and len(self.younger_level_strengths) != len(flow.priors):
            raise ValueError(f"need {len(flow.priors)} younger level strengths")

    def _strengths(self, reading: AgeReading, target_ages: np.ndarray, device) -> list[torch.Tensor]:
        """Per level, each face's strength (N x 1 x 1 x 1): the younger strengths for a face made younger."""
        older = torch.tensor(self.level_strengths, dtype=torch.float32)
        younger = torch.tensor(self.younger_level_strengths or self.level_strengths, dtype=torch.float32)
        is_younger = torch.from_numpy(np.asarray(target_ages) < np.asarray(reading.ages))[:, None]
        table = torch.where(is_younger, younger[None], older[None]).to(device)  # N x levels
        return [table[:, level, None, None, None] for level in range(len(self.level_strengths))]

    @staticmethod
    def _flatten(latents) -> torch.Tensor:
        return torch.cat([z.flatten(1) for z in latents], 1)

    @torch.no_grad()
    def read(self, latents: list[torch.Tensor], contexts: list) -> AgeReading:
        if self.heads is not None:
            return heads_reading(self.heads, latents, contexts, self.age_range)
        t, device = self.tensors, latents[0].device
        features = (self._flatten(latents) - t["latent_mean"].to(device)) / t["latent_std"].to(device)
        ages = (features @ t["age_weights"].to(device) + t["age_bias"].to(device)).cpu().numpy()
        ages = np.clip(ages.astype(np.float64), *self.age_range)
        unknown = [None] * latents[0].shape[0]
        return AgeReading(ages, unknown, unknown, latents, contexts)

    @torch.no_grad()
    def move(self, faces: torch.Tensor, reading: AgeReading, target_ages: np.ndarray, with_bits: bool = False):
        knots = self.flow.config.age_knots
        delta = (
            age_weights(torch.as_tensor(target_ages), knots) - age_weights(torch.as_tensor(reading.ages), knots)
        ).to(faces.device)
        shifts = [
            strength * torch.einsum("nk,kchw->nchw", delta, self.tensors[f"level{level}_age"].to(delta.device))
            for level, strength in enumerate(self._strengths(reading, target_ages, delta.device))
        ]  # level{i}_age: knots x C x H x W
        if self.details == "kept":
            return self.flow.decode([z + shift for z, shift in zip(reading.latents, shifts)], with_bits)
        # carried: every latent standardized under its prior at the current age; the top one comes back as
        # it was (same condition) plus its shift, the finer ones under the target age and the new context
        flow = self.flow
        current, target = (
            condition_vector(flow.config, ages).to(delta.device) if flow.config.conditional else None
            for ages in (reading.ages, target_ages)
        )
        eps = flow.standardize_latents(reading.latents, reading.contexts, current)
        return flow.generate(eps, [target] * (len(eps) - 1) + [current], offsets=shifts, with_bits=with_bits)


def heads_reading(
    heads: LatentHeads, latents: list[torch.Tensor], contexts: list, age_range: tuple[float, float]
) -> AgeReading:
    """The reading of the supervised heads on the top latent: the expected age under the age head (clipped to
    the age range), the most likely gender and ethnicity."""
    logits = heads(latents[-1])
    ages = np.clip(LatentHeads.age_years(logits).cpu().numpy().astype(np.float64), *age_range)
    genders = [GENDERS[i] for i in logits["gender"].argmax(1).tolist()]
    races = [RACES[i] for i in logits["race"].argmax(1).tolist()]
    return AgeReading(ages, genders, races, latents, contexts)


def save_trajectory(folder: Path, trajectory: AgeTrajectory, **facts) -> None:
    """The trajectory's settings (and `facts` about how it was made) as JSON, a post-hoc fit's tensors."""
    folder = Path(folder)
    posthoc = trajectory.name == PosthocTrajectory.name  # the transport reads ages with, not writes, a fit
    younger = getattr(trajectory, "younger_level_strengths", None) if posthoc else None
    meta = {
        "method": trajectory.name,
        "level_strengths": trajectory.level_strengths,
        "age_range": list(trajectory.age_range),
        "keep_skin_tone": trajectory.keep_skin_tone,
        **({"details": trajectory.details} if posthoc else {}),
        **({"younger_level_strengths": younger} if younger is not None else {}),
        **facts,
    }
    (folder / TRAJECTORY).write_text(json.dumps(meta, indent=2))
    if posthoc:
        save_file({k: v.contiguous() for k, v in trajectory.tensors.items()}, str(folder / POSTHOC_WEIGHTS))


def load_trajectory(folder: Path, flow: Glow, settings: dict | None = None) -> AgeTrajectory:
    """The trajectory saved in `folder`; without one, the conditional prior of a conditional flow."""
    folder = Path(folder)
    path = folder / TRAJECTORY
    meta = json.loads(path.read_text()) if path.exists() else {"method": ConditionalPriorTrajectory.name}
    kwargs = {
        "level_strengths": meta.get("level_strengths"),
        "age_range": meta.get("age_range", (1.0, 90.0)),
        "keep_skin_tone": meta.get("keep_skin_tone", True),
    }
    device = next(flow.parameters()).device
    trajectory: AgeTrajectory
    if meta["method"] == PosthocTrajectory.name:
        tensors = load_file(str(folder / POSTHOC_WEIGHTS), device=str(device))
        trajectory = PosthocTrajectory(
            flow,
            tensors,
            details=meta.get("details", "kept"),
            younger_level_strengths=meta.get("younger_level_strengths"),
            **kwargs,
        )
    elif meta["method"] == "transport":
        from model.transport import TransportTrajectory, load_transport  # it builds on this module

        tensors = load_file(str(folder / POSTHOC_WEIGHTS), device=str(device))
        trajectory = TransportTrajectory(flow, tensors, *load_transport(folder, device), **kwargs)
    elif not flow.config.conditional:
        raise ValueError("an unconditional flow needs a post-hoc age trajectory (age_posthoc.safetensors)")
    else:
        trajectory = ConditionalPriorTrajectory(flow, **kwargs)
    if (folder / HEADS_FILE).exists() and meta.get("reading", "heads") == "heads":
        trajectory.heads = load_heads(folder / HEADS_FILE, device)
    return trajectory
