"""Age trajectories: how a face moves through the flow's latent space as it ages.

Two ways, with one interface (`estimate` reads each face's age from its latents, `move` takes faces to
target ages):

- `ConditionalPriorTrajectory` (learned during training): the flow's priors are conditioned on age,
  gender and ethnicity. The current age is the one under which the face is most likely; an edit
  encodes the face into standardized latents under its current condition and decodes them under the
  target age, with gender and ethnicity held at the values that explain the face best.
- `PosthocTrajectory` (fitted afterwards): a least-squares fit of each level's raw latents on the age
  knots' piecewise-linear weights (smoothed per-age means) with gender and ethnicity as covariates, and
  a ridge regression of age on the latents to read the current age. With `details="carried"` only the
  top latent moves along the path directly; each finer level keeps its standardized latent under its
  prior, whose mean and scale follow the edited coarser levels and the target age, so the detail is
  redrawn to suit the older or younger face (plus that level's own share of the path).

Where the flow was trained with supervised heads on its top latent (model.heads, `heads.safetensors` beside
the weights), those heads read the current age, gender and ethnicity for every trajectory.

`level_strengths` (finest level first; a post-hoc trajectory may have `younger_level_strengths` for edits to
a younger age) scale how far each level moves, so an edit can leave the finest
detail, which carries identity, more or less alone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from model.condition import PAIRS, age_weights, condition_parts, condition_vector
from model.config import GENDERS, RACES
from model.data import FaceSet
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


def _source_blocks(faces: FaceSet, idx: np.ndarray) -> torch.Tensor:
    """One-hot source folder of each face (N x sources; N x 0 when the sources are not known). The sources
    differ in framing, padding and who is in them (All-Age-Faces is mostly Asian and has no ethnicity label),
    and in age mix, so the source is held fixed beside gender and ethnicity when age is fitted."""
    names = sorted({faces.sources[i] for i in idx if faces.sources and faces.sources[i]})
    if len(names) < 2:
        return torch.zeros(len(idx), 0, dtype=torch.float64)
    return torch.tensor([[float(faces.sources[i] == n) for n in names] for i in idx], dtype=torch.float64)


def _levels(flat: torch.Tensor, shapes) -> dict[str, torch.Tensor]:
    """K x D coefficients over all latents -> each level's `level{i}_age` (K x C x H x W), in level order."""
    out, offset = {}, 0
    for level, shape in enumerate(shapes):
        size = int(np.prod(shape))
        out[f"level{level}_age"] = flat[:, offset : offset + size].reshape(-1, *shape).float().contiguous()
        offset += size
    return out


def fit_posthoc(
    flow: Glow,
    faces: FaceSet,
    indices=None,
    rank: int = 0,
    ridges=(3e2, 1e3, 3e3, 1e4, 3e4),
    validation=0.1,
    batch: int = 200,
    seed: int = 0,
    log=print,
) -> dict[str, torch.Tensor]:
    """Fit the post-hoc trajectory on labelled aligned faces (every face of `faces`, or `indices`).

    The age path: each latent dimension's least-squares fit on the age knots' piecewise-linear weights
    (smoothed per-age means) with gender, ethnicity and source folder as covariates, so that age alone
    moves. The age reading: a ridge regression of age on the standardized latents, its strength chosen on
    a `validation` share of the faces, then refitted on all. `rank` > 0 keeps only that many directions of
    the age path (see `reduce_rank`). One pass of the flow over the faces; memory: two latent-size Gram
    matrices (2 x 1.2 GB at 64 px)."""
    config = flow.config
    idx = np.arange(len(faces)) if indices is None else np.asarray(indices)
    covariates = torch.cat(
        [
            condition_vector(
                config, faces.ages[idx], [faces.genders[i] for i in idx], [faces.races[i] for i in idx]
            ).double(),
            _source_blocks(faces, idx),
        ],
        1,
    )
    ages = torch.as_tensor(faces.ages[idx], dtype=torch.float64)
    is_val = torch.from_numpy(np.random.default_rng(seed).random(len(idx)) < validation)
    members = {"fit": ~is_val, "val": is_val}
    dim = sum(int(np.prod(shape)) for shape in flow.latent_shapes())
    gram = {part: torch.zeros(dim, dim, dtype=torch.float64) for part in ("fit", "val")}
    sums = {part: torch.zeros(dim, dtype=torch.float64) for part in ("fit", "val")}
    age_sums = {part: torch.zeros(dim, dtype=torch.float64) for part in ("fit", "val")}
    xtz = torch.zeros(covariates.shape[1], dim, dtype=torch.float64)
    val_latents = []
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(idx), batch):
            rows = slice(start, start + batch)
            z = torch.cat([level.flatten(1) for level in flow.encode(faces.batch(idx[rows]))], 1)
            xtz += covariates[rows].T @ z.double()
            for part, member in members.items():
                zp = z[member[rows]].double()
                gram[part].addmm_(zp.T, zp)  # in place: no latent-size temporaries per batch
                sums[part] += zp.sum(0)
                age_sums[part] += zp.T @ ages[rows][member[rows]]
            val_latents.append(z[is_val[rows]])
            if log and (start // batch) % 25 == 0:
                log(
                    f"  encoded {min(start + batch, len(idx))}/{len(idx)} faces ({time.perf_counter() - started:.0f} s)"
                )
    # the age weights, gender, ethnicity and source blocks each sum to one, so the plain least-squares
    # problem is singular; a small ridge term picks the well-conditioned solution
    normal = covariates.T @ covariates + 1e-2 * len(idx) * torch.eye(covariates.shape[1], dtype=torch.float64)
    tensors = _levels(torch.linalg.solve(normal, xtz)[: len(config.age_knots)], flow.latent_shapes())

    def reading(parts):
        n = sum(int(members[p].sum()) for p in parts)
        g, s = sum(gram[p] for p in parts), sum(sums[p] for p in parts)
        y = ages[torch.cat([torch.nonzero(members[p])[:, 0] for p in parts])]
        mean = s / n
        std = ((torch.diagonal(g) / n - mean**2).clamp_min(0)).sqrt() + 1e-6
        centred = (g - n * torch.outer(mean, mean)) / torch.outer(std, std)  # X^T X of standardized latents
        target = (sum(age_sums[p] for p in parts) - mean * y.sum()) / std  # X^T (y - mean y)
        return centred, target, mean, std, y.mean()

    centred, target, mean, std, bias = reading(["fit"])
    x_val = (torch.cat(val_latents).double() - mean) / std
    eye = torch.eye(dim, dtype=torch.float64)
    errors = {}
    for ridge in ridges:
        w = torch.cholesky_solve(target[:, None], torch.linalg.cholesky(centred + ridge * eye))[:, 0]
        errors[ridge] = float(((x_val @ w + bias).clamp(1.0, 90.0) - ages[is_val]).abs().mean())
    chosen = min(errors, key=errors.get)
    if log:
        log(
            "  age reading, validation error in years per ridge strength: "
            + ", ".join(f"{r:g}: {e:.2f}" for r, e in errors.items())
            + f" (chose {chosen:g})"
        )
    centred, target, mean, std, bias = reading(["fit", "val"])
    w = torch.cholesky_solve(target[:, None], torch.linalg.cholesky(centred + chosen * eye))[:, 0]
    tensors.update(
        latent_mean=mean.float(), latent_std=std.float(), age_weights=w.float(), age_bias=bias.float().reshape(1)
    )
    return reduce_rank(tensors, rank, log) if rank else tensors


def reduce_rank(tensors: dict[str, torch.Tensor], rank: int, log=None) -> dict[str, torch.Tensor]:
    """The post-hoc age path kept to its `rank` largest directions, measured in units of each latent's
    spread (`latent_std`); the reading is left as it is. With 12,288 latents and a few thousand faces per
    age, each knot's mean carries noise that a strong edit amplifies into blotches and a grid, while aging
    itself moves the latents along few directions."""
    levels = [f"level{i}_age" for i in range(sum(k.startswith("level") for k in tensors))]
    shapes = [tensors[k].shape[1:] for k in levels]
    coef = torch.cat([tensors[k].flatten(1).double() for k in levels], 1)
    spread = tensors["latent_std"].double()
    centre = coef.mean(0, keepdim=True)
    u, sv, vh = torch.linalg.svd((coef - centre) / spread, full_matrices=False)
    if log:
        log("  age path singular values: " + ", ".join(f"{v:.1f}" for v in sv.tolist()) + f" (kept {rank})")
    return {**tensors, **_levels(centre + (u[:, :rank] * sv[:rank]) @ vh[:rank] * spread, shapes)}


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


def latent_age_errors(
    trajectory: AgeTrajectory, faces: torch.Tensor, ages: np.ndarray, mean_age: float, batch: int = 50
) -> dict[str, float]:
    """Mean absolute error in years of the latent age estimate, against always guessing `mean_age`."""
    estimates = np.concatenate([trajectory.estimate(faces[i : i + batch]).ages for i in range(0, len(faces), batch)])
    return {
        "mae_years": float(np.abs(estimates - ages).mean()),
        "mean_guess_mae_years": float(np.abs(mean_age - ages).mean()),
        "faces": int(len(ages)),
    }


def main(argv=None) -> None:
    """`python -m model.age --weights DIR --data data/faces`: fit the post-hoc trajectory, compare it with
    the conditional prior on held-out faces, and write the chosen trajectory into DIR."""
    import argparse

    from model.checkpoint import load_flow
    from model.data import load_faces

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("data/faces"))
    parser.add_argument("--fit-faces", type=int, default=0, help="training faces for the post-hoc fit (0: all)")
    parser.add_argument("--eval-faces", type=int, default=500, help="held-out faces for the comparison")
    parser.add_argument(
        "--method",
        choices=["best", ConditionalPriorTrajectory.name, PosthocTrajectory.name],
        default="best",
        help="which trajectory to write (best: lower held-out age error)",
    )
    parser.add_argument("--level-strengths", default="", help="per level, finest first, e.g. 0.5,1,1")
    parser.add_argument(
        "--younger-level-strengths", default="", help="post-hoc: per level, for edits to a younger age (default: same)"
    )
    parser.add_argument("--rank", type=int, default=0, help="directions kept of the post-hoc age path (0: all)")
    parser.add_argument(
        "--details",
        choices=PosthocTrajectory.DETAILS,
        default="carried",
        help="post-hoc: finer levels kept as they are plus their shift, or carried by their "
        "priors after the edited coarser levels and the target age",
    )
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)
    if args.threads:
        torch.set_num_threads(args.threads)
    flow = load_flow(args.weights)
    strengths = [float(s) for s in args.level_strengths.split(",")] if args.level_strengths else None

    train = load_faces(args.data, flow.config.resolution, "train")
    rng = np.random.default_rng(0)
    fit_idx = (
        np.sort(rng.choice(len(train), args.fit_faces, replace=False))
        if 0 < args.fit_faces < len(train)
        else np.arange(len(train))
    )
    heldout = load_faces(args.data, flow.config.resolution, "heldout")
    eval_idx = np.random.default_rng(1).choice(len(heldout), min(args.eval_faces, len(heldout)), replace=False)
    eval_faces, eval_ages = heldout.batch(eval_idx), heldout.ages[eval_idx].astype(np.float64)
    mean_age = float(train.ages.mean())

    candidates: list[AgeTrajectory] = []
    if flow.config.conditional:
        candidates.append(ConditionalPriorTrajectory(flow, strengths))
    tensors = fit_posthoc(flow, train, fit_idx, rank=args.rank)
    younger = [float(s) for s in args.younger_level_strengths.split(",")] if args.younger_level_strengths else None
    candidates.append(
        PosthocTrajectory(flow, tensors, strengths, details=args.details, younger_level_strengths=younger)
    )
    report = {}
    for trajectory in candidates:
        report[trajectory.name] = latent_age_errors(trajectory, eval_faces, eval_ages, mean_age)
        print(
            f"{trajectory.name:>18}: held-out age error {report[trajectory.name]['mae_years']:.1f} years "
            f"(always guessing the mean: {report[trajectory.name]['mean_guess_mae_years']:.1f})"
        )
    if (args.weights / HEADS_FILE).exists():  # the reading the editor uses with these weights
        reader = PosthocTrajectory(flow, tensors, strengths, details=args.details)
        reader.heads = load_heads(args.weights / HEADS_FILE)
        report["heads"] = latent_age_errors(reader, eval_faces, eval_ages, mean_age)
        print(
            f"{'heads':>18}: held-out age error {report['heads']['mae_years']:.1f} years (the current age the "
            "editor reads with these weights)"
        )
    if args.method == "best":
        chosen = min(candidates, key=lambda t: report[t.name]["mae_years"])
    else:
        chosen = next(t for t in candidates if t.name == args.method)
    save_trajectory(args.weights, chosen, **({"rank": args.rank} if chosen.name == PosthocTrajectory.name else {}))
    (args.weights / "age_report.json").write_text(json.dumps({"chosen": chosen.name, **report}, indent=2))
    print(f"wrote the {chosen.name} trajectory to {args.weights}")


if __name__ == "__main__":
    main()
