"""Fitting the post-hoc age trajectory (`model.age.PosthocTrajectory`) on labelled aligned faces, and the
command that fits it, compares it with the conditional prior on held-out faces and writes the chosen one
beside the weights: `python -m model.age_fit --weights DIR --data data/faces`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from model.age import AgeTrajectory, ConditionalPriorTrajectory, PosthocTrajectory, save_trajectory
from model.checkpoint import load_flow
from model.condition import condition_vector
from model.data import FaceSet, load_faces
from model.flow.glow import Glow
from model.heads import HEADS_FILE, load_heads


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
    """`python -m model.age_fit --weights DIR --data data/faces`: fit the post-hoc trajectory, compare it with
    the conditional prior on held-out faces, and write the chosen trajectory into DIR."""
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
