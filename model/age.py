"""Age trajectories: how a face moves through the flow's latent space as it ages.

Two ways, with one interface (`estimate` reads each face's age from its latents, `move` takes faces to
target ages):

- `ConditionalPriorTrajectory` (learned during training): the flow's priors are conditioned on age,
  gender and ethnicity. The current age is the one under which the face is most likely; an edit
  encodes the face into standardized latents under its current condition and decodes them under the
  target age, with gender and ethnicity held at the values that explain the face best.
- `PosthocTrajectory` (fitted afterwards): a least-squares fit of each level's raw latents on the age
  knots' piecewise-linear weights (smoothed per-age means) with gender and ethnicity as covariates, and
  a ridge regression of age on the latents to read the current age.

`level_strengths` (finest level first) scale how far each level moves, so an edit can leave the finest
detail, which carries identity, more or less alone.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from model.condition import PAIRS, age_weights, condition_parts, condition_vector
from model.flow.glow import Glow

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
        self.keep_skin_tone = bool(keep_skin_tone)
        n_levels = len(flow.priors)
        self.level_strengths = [float(s) for s in (level_strengths or [1.0] * n_levels)]
        if len(self.level_strengths) != n_levels:
            raise ValueError(f"need {n_levels} level strengths, got {len(self.level_strengths)}")
        self.age_range = (float(age_range[0]), float(age_range[1]))

    def estimate(self, faces: torch.Tensor) -> AgeReading:
        raise NotImplementedError

    def move(self, faces: torch.Tensor, reading: AgeReading, target_ages: np.ndarray) -> torch.Tensor:
        raise NotImplementedError


class ConditionalPriorTrajectory(AgeTrajectory):
    name = "conditional_prior"
    coarse_ages = tuple(range(0, 91, 5))

    @torch.no_grad()
    def estimate(self, faces: torch.Tensor) -> AgeReading:
        """Gender and ethnicity: the pair under which the face is most likely, summed over the coarse ages;
        then the age: the most likely of the whole years in the age range under that pair."""
        flow = self.flow
        device = faces.device
        latents, contexts, _ = flow.flow_forward(faces - 0.5)
        fine_ages = np.arange(self.age_range[0], self.age_range[1] + 0.5, 1.0)
        ages = np.concatenate([np.asarray(self.coarse_ages, np.float64), fine_ages])
        age_rows, other_rows = condition_parts(flow.config, ages)
        table = flow.condition_grid_log_likelihoods(latents, contexts, age_rows.to(device), other_rows.to(device))
        coarse, fine = table[:, :, :len(self.coarse_ages)], table[:, :, len(self.coarse_ages):]
        best = torch.logsumexp(coarse, 2).argmax(1)
        found = fine[torch.arange(len(faces), device=device), best].argmax(1)
        genders = [PAIRS[b][0] for b in best.tolist()]
        races = [PAIRS[b][1] for b in best.tolist()]
        return AgeReading(fine_ages[found.cpu().numpy()], genders, races, latents, contexts)

    def _conditions(self, ages, reading: AgeReading) -> torch.Tensor:
        return condition_vector(self.flow.config, ages, reading.genders, reading.races)

    @torch.no_grad()
    def move(self, faces: torch.Tensor, reading: AgeReading, target_ages: np.ndarray) -> torch.Tensor:
        device = faces.device
        current = self._conditions(reading.ages, reading).to(device)
        target = self._conditions(target_ages, reading).to(device)
        eps = self.flow.standardize_latents(reading.latents, reading.contexts, current)
        per_level = [current + s * (target - current) for s in self.level_strengths]
        return self.flow.generate(eps, per_level)


class PosthocTrajectory(AgeTrajectory):
    name = "posthoc"

    def __init__(self, flow: Glow, tensors: dict[str, torch.Tensor], level_strengths=None,
                 age_range=(1.0, 90.0), keep_skin_tone=True) -> None:
        super().__init__(flow, level_strengths, age_range, keep_skin_tone)
        self.tensors = tensors

    @staticmethod
    def _flatten(latents) -> torch.Tensor:
        return torch.cat([z.flatten(1) for z in latents], 1)

    @torch.no_grad()
    def estimate(self, faces: torch.Tensor) -> AgeReading:
        latents, contexts, _ = self.flow.flow_forward(faces - 0.5)
        t = self.tensors
        features = (self._flatten(latents) - t["latent_mean"].to(faces.device)) / t["latent_std"].to(faces.device)
        ages = (features @ t["age_weights"].to(faces.device) + t["age_bias"].to(faces.device)).cpu().numpy()
        ages = np.clip(ages.astype(np.float64), *self.age_range)
        unknown = [None] * len(faces)
        return AgeReading(ages, unknown, unknown, latents, contexts)

    @torch.no_grad()
    def move(self, faces: torch.Tensor, reading: AgeReading, target_ages: np.ndarray) -> torch.Tensor:
        knots = self.flow.config.age_knots
        delta = (age_weights(torch.as_tensor(target_ages), knots)
                 - age_weights(torch.as_tensor(reading.ages), knots)).to(faces.device)
        moved = []
        for level, (z, strength) in enumerate(zip(reading.latents, self.level_strengths)):
            knot_means = self.tensors[f"level{level}_age"].to(faces.device)  # knots x C x H x W
            moved.append(z + strength * torch.einsum("nk,kchw->nchw", delta, knot_means))
        return self.flow.decode(moved)


def fit_posthoc(flow: Glow, faces: torch.Tensor, ages: np.ndarray, genders, races,
                ridge: float = 1e3, batch: int = 100) -> dict[str, torch.Tensor]:
    """Fit the post-hoc trajectory on labelled aligned faces (N x 3 x S x S)."""
    config = flow.config
    with torch.no_grad():
        encoded = [flow.encode(faces[i:i + batch]) for i in range(0, len(faces), batch)]
    latents = [torch.cat([e[level] for e in encoded]).double() for level in range(len(flow.priors))]
    features = condition_vector(config, ages, genders, races).double()
    tensors: dict[str, torch.Tensor] = {}
    n_knots = len(config.age_knots)
    # the age weights, gender and ethnicity blocks each sum to one, so the plain least-squares problem is
    # singular; a small ridge term picks the well-conditioned solution
    normal = features.T @ features + 1e-2 * len(features) * torch.eye(features.shape[1], dtype=torch.float64)
    for level, z in enumerate(latents):
        coef = torch.linalg.solve(normal, features.T @ z.flatten(1))
        tensors[f"level{level}_age"] = coef[:n_knots].reshape(n_knots, *z.shape[1:]).float()
    flat = torch.cat([z.flatten(1) for z in latents], 1)
    mean, std = flat.mean(0), flat.std(0) + 1e-6
    x = (flat - mean) / std
    y = torch.as_tensor(ages, dtype=torch.float64)
    gram = x @ x.T + ridge * torch.eye(len(x), dtype=torch.float64)
    alpha = torch.linalg.solve(gram, y - y.mean())
    tensors.update(latent_mean=mean.float(), latent_std=std.float(), age_weights=(x.T @ alpha).float(),
                   age_bias=y.mean().float().reshape(1))
    return tensors


def save_trajectory(folder: Path, trajectory: AgeTrajectory) -> None:
    folder = Path(folder)
    meta = {"method": trajectory.name, "level_strengths": trajectory.level_strengths,
            "age_range": list(trajectory.age_range), "keep_skin_tone": trajectory.keep_skin_tone}
    (folder / TRAJECTORY).write_text(json.dumps(meta, indent=2))
    if isinstance(trajectory, PosthocTrajectory):
        save_file({k: v.contiguous() for k, v in trajectory.tensors.items()}, str(folder / POSTHOC_WEIGHTS))


def load_trajectory(folder: Path, flow: Glow, settings: dict | None = None) -> AgeTrajectory:
    """The trajectory saved in `folder`; without one, the conditional prior of a conditional flow."""
    folder = Path(folder)
    path = folder / TRAJECTORY
    meta = json.loads(path.read_text()) if path.exists() else {"method": ConditionalPriorTrajectory.name}
    kwargs = {"level_strengths": meta.get("level_strengths"), "age_range": meta.get("age_range", (1.0, 90.0)),
              "keep_skin_tone": meta.get("keep_skin_tone", True)}
    if meta["method"] == PosthocTrajectory.name:
        tensors = load_file(str(folder / POSTHOC_WEIGHTS), device=str(next(flow.parameters()).device))
        return PosthocTrajectory(flow, tensors, **kwargs)
    if not flow.config.conditional:
        raise ValueError("an unconditional flow needs a post-hoc age trajectory (age_posthoc.safetensors)")
    return ConditionalPriorTrajectory(flow, **kwargs)


def latent_age_errors(trajectory: AgeTrajectory, faces: torch.Tensor, ages: np.ndarray, mean_age: float,
                      batch: int = 50) -> dict[str, float]:
    """Mean absolute error in years of the latent age estimate, against always guessing `mean_age`."""
    estimates = np.concatenate([trajectory.estimate(faces[i:i + batch]).ages for i in range(0, len(faces), batch)])
    return {"mae_years": float(np.abs(estimates - ages).mean()),
            "mean_guess_mae_years": float(np.abs(mean_age - ages).mean()),
            "faces": int(len(ages))}


def main(argv=None) -> None:
    """`python -m model.age --weights DIR --data data/faces`: fit the post-hoc trajectory, compare it with
    the conditional prior on held-out faces, and write the chosen trajectory into DIR."""
    import argparse

    from model.checkpoint import load_flow
    from model.data import load_faces

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("data/faces"))
    parser.add_argument("--fit-faces", type=int, default=3000, help="training faces for the post-hoc fit")
    parser.add_argument("--eval-faces", type=int, default=500, help="held-out faces for the comparison")
    parser.add_argument("--method", choices=["best", ConditionalPriorTrajectory.name, PosthocTrajectory.name],
                        default="best", help="which trajectory to write (best: lower held-out age error)")
    parser.add_argument("--level-strengths", default="", help="per level, finest first, e.g. 0.5,1,1")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    flow = load_flow(args.weights)
    strengths = [float(s) for s in args.level_strengths.split(",")] if args.level_strengths else None

    train = load_faces(args.data, flow.config.resolution, "train")
    rng = np.random.default_rng(0)
    fit_idx = rng.choice(len(train), min(args.fit_faces, len(train)), replace=False)
    heldout = load_faces(args.data, flow.config.resolution, "heldout")
    eval_idx = np.random.default_rng(1).choice(len(heldout), min(args.eval_faces, len(heldout)), replace=False)
    eval_faces, eval_ages = heldout.batch(eval_idx), heldout.ages[eval_idx].astype(np.float64)
    mean_age = float(train.ages.mean())

    candidates: list[AgeTrajectory] = []
    if flow.config.conditional:
        candidates.append(ConditionalPriorTrajectory(flow, strengths))
    tensors = fit_posthoc(flow, train.batch(fit_idx), train.ages[fit_idx], [train.genders[i] for i in fit_idx],
                          [train.races[i] for i in fit_idx])
    candidates.append(PosthocTrajectory(flow, tensors, strengths))
    report = {}
    for trajectory in candidates:
        report[trajectory.name] = latent_age_errors(trajectory, eval_faces, eval_ages, mean_age)
        print(f"{trajectory.name:>18}: held-out age error {report[trajectory.name]['mae_years']:.1f} years "
              f"(always guessing the mean: {report[trajectory.name]['mean_guess_mae_years']:.1f})")
    if args.method == "best":
        chosen = min(candidates, key=lambda t: report[t.name]["mae_years"])
    else:
        chosen = next(t for t in candidates if t.name == args.method)
    save_trajectory(args.weights, chosen)
    (args.weights / "age_report.json").write_text(json.dumps({"chosen": chosen.name, **report}, indent=2))
    print(f"wrote the {chosen.name} trajectory to {args.weights}")


if __name__ == "__main__":
    main()
