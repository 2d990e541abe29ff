"""A learned per-face age transport in the frozen flow's latent space (the `transport` trajectory).

The fixed mean shift of the post-hoc trajectory moves every face by the same latent change. Here each face
moves by its own: a small conditional normalizing flow on vectors (affine couplings whose networks see
age, gender and ethnicity) maps a face's coarse latents to a base variable u that an adversary cannot read
age from. An edit maps the face forward under its current age and back under the target age, so the face
keeps its place among faces of its age (its rank within its age group) and only what age explains moves.

The vectors: the two coarse levels' raw latents (top 8 x 8 x 48 and middle 16 x 16 x 12 at 64 px), each
standardized by its training spread, projected onto `rank` directions: the directions along which the
per-age means move first, then the largest principal components of what is left. The part of the
latents outside those directions is left as it is; the finest level is carried by its prior under the
target age and the edited coarser latents (as the post-hoc trajectory's `details="carried"`).

Saved as `age_transport.safetensors` (tensors only) beside `age_transport.json` (its sizes and how it was
trained); the current age is read as the post-hoc trajectory reads it (`age_posthoc.safetensors`).
Train with `python -m model.transport --weights weights --data data/faces-loose --cache data/transport`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from model.age import AgeReading, PosthocTrajectory
from model.condition import GENDERS, RACES, age_weights, condition_vector, one_hot
from model.flow.glow import Glow

TRANSPORT_WEIGHTS = "age_transport.safetensors"
TRANSPORT_CONFIG = "age_transport.json"
AGE_CENTRE, AGE_SCALE = 35.0, 25.0
COARSE_LEVELS = (1, 2)  # the levels the transport moves (0 is the finest)


def transport_condition(age_knots, ages, genders=None, races=None) -> torch.Tensor:
    """N x (1 + knots + genders + ethnicities): the age as a number and as knot weights, then one-hot gender
    and ethnicity (uniform where unknown, as the service reads faces)."""
    ages_t = torch.as_tensor(np.asarray(ages, np.float64), dtype=torch.float32).reshape(-1)
    n = len(ages_t)
    return torch.cat(
        [
            ((ages_t - AGE_CENTRE) / AGE_SCALE)[:, None],
            age_weights(ages_t, tuple(age_knots)),
            one_hot(list(genders) if genders is not None else [None] * n, GENDERS),
            one_hot(list(races) if races is not None else [None] * n, RACES),
        ],
        1,
    )


def condition_size(age_knots) -> int:
    return 1 + len(age_knots) + len(GENDERS) + len(RACES)


class ConditionalCoupling(nn.Module):
    """An affine coupling on vectors: a fixed permutation, then the second half scaled and shifted by a
    network of the first half and the condition. `forward(x, c) -> (y, logdet)`, `inverse(y, c) -> (x, logdet)`,
    logdet per sample; the scale is bounded (tanh) so that no condition blows a face up."""

    def __init__(self, dim: int, cond_dim: int, hidden: int, seed: int, max_log_scale: float = 2.0) -> None:
        super().__init__()
        perm = torch.randperm(dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("perm", perm)
        self.register_buffer("inverse_perm", torch.argsort(perm))
        self.half = dim // 2
        self.max_log_scale = max_log_scale
        self.net = nn.Sequential(
            nn.Linear(self.half + cond_dim, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, 2 * (dim - self.half)),
        )
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity
        nn.init.zeros_(self.net[-1].bias)

    def _scale_shift(self, kept: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_scale, shift = self.net(torch.cat([kept, condition], 1)).chunk(2, 1)
        return self.max_log_scale * torch.tanh(raw_scale / self.max_log_scale), shift

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x[:, self.perm]
        kept, moved = x[:, : self.half], x[:, self.half :]
        log_scale, shift = self._scale_shift(kept, condition)
        return torch.cat([kept, moved * torch.exp(log_scale) + shift], 1), log_scale.sum(1)

    def inverse(self, y: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, moved = y[:, : self.half], y[:, self.half :]
        log_scale, shift = self._scale_shift(kept, condition)
        x = torch.cat([kept, (moved - shift) * torch.exp(-log_scale)], 1)
        return x[:, self.inverse_perm], -log_scale.sum(1)


class AgeTransport(nn.Module):
    """The conditional flow on the latent vectors: x (N x rank, in the basis) <-> u, under a condition."""

    def __init__(self, rank: int, age_knots, blocks: int = 6, hidden: int = 192) -> None:
        super().__init__()
        self.rank, self.age_knots, self.blocks, self.hidden = rank, tuple(age_knots), blocks, hidden
        cond_dim = condition_size(self.age_knots)
        self.couplings = nn.ModuleList(
            ConditionalCoupling(rank, cond_dim, hidden, seed=block) for block in range(blocks)
        )
        self.register_buffer("feature_std", torch.ones(rank))  # the vectors' spread, set before training

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x / self.feature_std
        logdet = -torch.log(self.feature_std).sum().expand(len(x))
        for coupling in self.couplings:
            h, ld = coupling(h, condition)
            logdet = logdet + ld
        return h, logdet

    def inverse(self, u: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, logdet = u, u.new_zeros(len(u))
        for coupling in reversed(self.couplings):
            h, ld = coupling.inverse(h, condition)
            logdet = logdet + ld
        return h * self.feature_std, logdet + torch.log(self.feature_std).sum()

    def nll(self, x: torch.Tensor, condition: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Negative log-density in nats per dimension of each vector, and its base variable."""
        u, logdet = self(x, condition)
        log_p = -0.5 * (u * u).sum(1) - 0.5 * self.rank * math.log(2 * math.pi) + logdet
        return -log_p / self.rank, u

    def move(self, x: torch.Tensor, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.inverse(self(x, source)[0], target)[0]


class LatentBasis:
    """The coarse levels' raw latents <-> the transport's vectors: standardized by `mean` and `std` (D each),
    projected on the orthonormal columns of `basis` (D x rank)."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, basis: torch.Tensor) -> None:
        self.mean, self.std, self.basis = mean.float(), std.float(), basis.float()

    def vectors(self, coarse: torch.Tensor) -> torch.Tensor:
        return ((coarse - self.mean) / self.std) @ self.basis

    def moved(self, coarse: torch.Tensor, change: torch.Tensor) -> torch.Tensor:
        """The coarse latents with their vectors changed by `change`; the rest of each latent as it was."""
        return coarse + (change @ self.basis.T) * self.std


def coarse_latents(latents: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([latents[level].flatten(1) for level in COARSE_LEVELS], 1)


def split_coarse(coarse: torch.Tensor, latents: list[torch.Tensor]) -> dict[int, torch.Tensor]:
    out, offset = {}, 0
    for level in COARSE_LEVELS:
        size = latents[level][0].numel()
        out[level] = coarse[:, offset : offset + size].reshape(latents[level].shape)
        offset += size
    return out


class TransportTrajectory(PosthocTrajectory):
    """Ages read by the post-hoc reading; faces moved by the learned transport (see the module docstring).
    `level_strengths` (finest first) scale each level's change: the finest level's carried change, and the
    transport's change of the two coarse levels."""

    name = "transport"

    def __init__(
        self,
        flow: Glow,
        tensors: dict[str, torch.Tensor],
        transport: AgeTransport,
        basis: LatentBasis,
        level_strengths=None,
        age_range=(1.0, 90.0),
        keep_skin_tone=True,
    ) -> None:
        super().__init__(flow, tensors, level_strengths, age_range, keep_skin_tone, details="carried")
        self.transport = transport.eval()
        self.basis = basis

    @torch.no_grad()
    def move(self, faces: torch.Tensor, reading: AgeReading, target_ages: np.ndarray, with_bits: bool = False):
        flow, latents = self.flow, reading.latents
        knots = self.transport.age_knots
        source = transport_condition(knots, reading.ages, reading.genders, reading.races).to(faces.device)
        target = transport_condition(knots, target_ages, reading.genders, reading.races).to(faces.device)
        coarse = coarse_latents(latents)
        x = self.basis.vectors(coarse)
        change = self.transport.move(x, source, target) - x
        moved = split_coarse(coarse, latents)
        for level in COARSE_LEVELS:
            per_level = self.basis.moved(coarse, change * self.level_strengths[level])
            moved[level] = split_coarse(per_level, latents)[level]
        current, aim = (
            condition_vector(flow.config, ages).to(faces.device) if flow.config.conditional else None
            for ages in (reading.ages, target_ages)
        )
        fine = flow.standardize_latents(latents[:1], reading.contexts[:1], current)[0]
        prior, strength = flow.priors[0], self.level_strengths[0]

        def draw(index: int, context: torch.Tensor | None) -> torch.Tensor:
            if index in moved:
                return moved[index]
            mean, logs = prior.params(context, aim, fine.shape[0])  # the finest level, carried
            return latents[0] + strength * (mean + torch.exp(logs) * fine - latents[0])

        return flow.images_from(flow.invert(None, draw), with_bits)


# ---- saving and loading -----------------------------------------------------------------------------
def save_transport(folder: Path, transport: AgeTransport, basis: LatentBasis, facts: dict) -> None:
    folder = Path(folder)
    tensors = {f"transport.{k}": v for k, v in transport.state_dict().items()}
    tensors.update({"basis.mean": basis.mean, "basis.std": basis.std, "basis.basis": basis.basis.half()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / TRANSPORT_WEIGHTS))
    config = {
        "rank": transport.rank,
        "blocks": transport.blocks,
        "hidden": transport.hidden,
        "age_knots": list(transport.age_knots),
        "coarse_levels": list(COARSE_LEVELS),
        **facts,
    }
    (folder / TRANSPORT_CONFIG).write_text(json.dumps(config, indent=2))


def load_transport(folder: Path, device: str | torch.device = "cpu") -> tuple[AgeTransport, LatentBasis]:
    folder = Path(folder)
    config = json.loads((folder / TRANSPORT_CONFIG).read_text())
    tensors = load_file(str(folder / TRANSPORT_WEIGHTS), device=str(device))
    transport = AgeTransport(config["rank"], config["age_knots"], config["blocks"], config["hidden"]).to(device)
    transport.load_state_dict({k[len("transport.") :]: v for k, v in tensors.items() if k.startswith("transport.")})
    basis = LatentBasis(tensors["basis.mean"], tensors["basis.std"], tensors["basis.basis"])
    return transport.eval(), basis


# ---- fitting ----------------------------------------------------------------------------------------
def fit_basis(
    coarse: torch.Tensor, ages: np.ndarray, rank: int, age_directions: int = 8, bin_years: float = 5.0
) -> LatentBasis:
    """Age-mean directions first (the SVD of the per-age-bin means of the standardized latents), then the
    principal components of what is left, `rank` in all, orthonormal."""
    mean = coarse.double().mean(0)
    std = coarse.double().std(0) + 1e-6
    x = (coarse.double() - mean) / std
    bins = (np.asarray(ages) // bin_years).astype(int)
    means = torch.stack([x[torch.from_numpy(bins == b)].mean(0) for b in np.unique(bins)])
    _, _, vh = torch.linalg.svd(means - means.mean(0), full_matrices=False)
    age_dirs = vh[:age_directions].T  # D x a
    rest = x - (x @ age_dirs) @ age_dirs.T
    sample = rest[torch.randperm(len(rest), generator=torch.Generator().manual_seed(0))[:8000]]
    _, _, vh_rest = torch.linalg.svd(sample, full_matrices=False)
    basis, _ = torch.linalg.qr(torch.cat([age_dirs, vh_rest[: rank - age_directions].T], 1))
    return LatentBasis(mean.float(), std.float(), basis.float())


def train_transport(
    x: torch.Tensor,
    ages: np.ndarray,
    genders,
    races,
    age_knots,
    steps: int = 3000,
    batch: int = 256,
    lr: float = 1e-3,
    adversary_weight: float = 1.0,
    unknown_share: float = 0.5,
    blocks: int = 6,
    hidden: int = 192,
    seed: int = 0,
    log=print,
    heldout: tuple | None = None,
) -> tuple[AgeTransport, list[dict]]:
    """Maximum likelihood of the vectors `x` under their labels, plus an adversary: an age head trained on
    the base variable u, and a penalty on the transport (times `adversary_weight`) for the share of age's
    variance the head explains, so that u carries no age. (The penalty stops at zero explained variance: a
    reversed gradient would reward the transport for making the head's error larger than guessing, which
    bends the map.) Gender and ethnicity are hidden (uniform) for `unknown_share` of each batch: the service edits
    faces whose gender and ethnicity it does not read."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    transport = AgeTransport(x.shape[1], age_knots, blocks, hidden)
    transport.feature_std.copy_(x.std(0) + 1e-6)
    head = nn.Sequential(nn.Linear(x.shape[1], 128), nn.SiLU(), nn.Linear(128, 1))
    optimizer = torch.optim.Adam(transport.parameters(), lr=lr)
    head_optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps)
    conditions = transport_condition(age_knots, ages, genders, races)
    hidden_conditions = transport_condition(age_knots, ages)
    target = torch.as_tensor((np.asarray(ages, np.float64) - AGE_CENTRE) / AGE_SCALE, dtype=torch.float32)
    history = []
    started = time.perf_counter()
    for step in range(steps):
        idx = torch.from_numpy(rng.choice(len(x), batch, replace=False))
        hide = torch.rand(batch, 1) < unknown_share
        condition = torch.where(hide, hidden_conditions[idx], conditions[idx])
        nll, u = transport.nll(x[idx], condition)
        head_loss = F.mse_loss(head(u.detach())[:, 0], target[idx])
        head_optimizer.zero_grad(set_to_none=True)
        head_loss.backward()
        head_optimizer.step()
        explained = 1 - F.mse_loss(head(u)[:, 0], target[idx]) / target[idx].var()
        adversary = explained.clamp_min(0)
        loss = nll.mean() + adversary_weight * adversary
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transport.parameters(), 10.0)
        optimizer.step()
        schedule.step()
        if log and (step % 500 == 0 or step == steps - 1):
            row = {
                "step": step,
                "nll": round(float(nll.mean()), 4),
                "age_explained_by_head": round(float(explained.detach()), 4),
                "seconds": round(time.perf_counter() - started, 1),
            }
            if heldout is not None:
                row.update(evaluate_transport(transport, *heldout))
            history.append(row)
            log("  " + ", ".join(f"{k} {v}" for k, v in row.items()))
    return transport.eval(), history


@torch.no_grad()
def evaluate_transport(transport: AgeTransport, x: torch.Tensor, ages: np.ndarray, genders, races) -> dict:
    """Held-out nats/dim, and how much age a linear probe reads from u (R^2; the age-free goal: about 0)
    against from x."""
    condition = transport_condition(transport.age_knots, ages, genders, races)
    nll, u = transport.nll(x, condition)
    y = torch.as_tensor(np.asarray(ages, np.float64))

    def r2(features: torch.Tensor) -> float:
        half = len(features) // 2
        a = torch.cat([features.double(), torch.ones(len(features), 1, dtype=torch.float64)], 1)
        w = torch.linalg.lstsq(a[:half], y[:half, None]).solution
        residual = y[half:] - (a[half:] @ w)[:, 0]
        return float(1 - residual.var() / y[half:].var())

    was = transport.training
    transport.eval()
    out = {"heldout_nll": round(float(nll.mean()), 4), "age_r2_x": round(r2(x), 3), "age_r2_u": round(r2(u), 3)}
    transport.train(was)
    return out


@torch.no_grad()
def encode_coarse(flow: Glow, faces, batch: int = 100, log=print) -> torch.Tensor:
    """The coarse levels' raw latents of every face of a FaceSet, float32 N x D."""
    out = []
    started = time.perf_counter()
    for start in range(0, len(faces), batch):
        out.append(coarse_latents(flow.encode(faces.batch(np.arange(start, min(start + batch, len(faces)))))))
        if log and (start // batch) % 20 == 0:
            log(f"  encoded {start + len(out[-1])}/{len(faces)} faces ({time.perf_counter() - started:.0f} s)")
    return torch.cat(out)


def cached_coarse(flow: Glow, faces, path: Path, log=print) -> torch.Tensor:
    """`encode_coarse`, kept in `path` (safetensors, float16) for the same flow and faces."""
    if path.exists():
        return load_file(str(path))["coarse"].float()
    coarse = encode_coarse(flow, faces, log=log)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"coarse": coarse.half().contiguous()}, str(tmp))
    tmp.replace(path)
    return coarse


def age_balanced_choice(ages: np.ndarray, n: int, bin_years: float = 5.0, seed: int = 0) -> np.ndarray:
    """n sorted indices drawn without replacement with weights 1 / sqrt(size of the face's 5-year age bin):
    fewer faces to encode, without losing the rare old ones."""
    bins = (np.asarray(ages) // bin_years).astype(int)
    weights = 1.0 / np.sqrt(np.bincount(bins)[bins])
    return np.sort(np.random.default_rng(seed).choice(len(ages), n, replace=False, p=weights / weights.sum()))


def subset(faces, index: np.ndarray):
    from model.data import FaceSet

    return FaceSet(
        faces.images[index],
        faces.ages[index],
        [faces.genders[i] for i in index],
        [faces.races[i] for i in index],
        [faces.files[i] for i in index],
        [faces.sources[i] for i in index] if faces.sources else [],
    )


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256: names the latent cache after the flow that made it."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def main(argv=None) -> None:
    """`python -m model.transport --weights weights --data data/faces-loose --cache data/transport`: encode
    the faces once (kept in --cache), fit the basis and the transport on the train split, report held-out
    figures, and write age_transport.* into --weights (with --select, also make it the trajectory)."""
    import argparse

    from model.age import POSTHOC_WEIGHTS, TRAJECTORY, save_trajectory
    from model.checkpoint import WEIGHTS, load_flow
    from model.data import load_faces

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--data", type=Path, default=Path("data/faces-loose"))
    parser.add_argument("--cache", type=Path, default=Path("data/transport"))
    parser.add_argument("--out", type=Path, default=None, help="where to write age_transport.* (default --weights)")
    parser.add_argument(
        "--train-faces",
        type=int,
        default=12000,
        help="train faces to encode, rare ages favoured (0: all; encoding is the slow part)",
    )
    parser.add_argument("--rank", type=int, default=8, help="directions of the coarse latents the transport moves")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--adversary-weight", type=float, default=1.0)
    parser.add_argument("--level-strengths", default="0.5,4,4", help="per level, finest first (with --select)")
    parser.add_argument("--select", action="store_true", help="write age_trajectory.json with method transport")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    out = args.out or args.weights
    flow = load_flow(args.weights).eval()
    digest = file_digest(args.weights / WEIGHTS)
    train, heldout = (
        load_faces(args.data, flow.config.resolution, "train"),
        load_faces(args.data, flow.config.resolution, "heldout"),
    )
    all_train = len(train)
    if 0 < args.train_faces < len(train):
        train = subset(train, age_balanced_choice(train.ages, args.train_faces))
    started = time.perf_counter()
    coarse = cached_coarse(flow, train, args.cache / f"coarse-train-{digest}-{len(train)}.safetensors")
    coarse_heldout = cached_coarse(flow, heldout, args.cache / f"coarse-heldout-{digest}.safetensors")
    print(f"latents of {len(train)} train and {len(heldout)} held-out faces ({time.perf_counter() - started:.0f} s)")
    basis = fit_basis(coarse, train.ages, args.rank)
    x, x_heldout = basis.vectors(coarse), basis.vectors(coarse_heldout)
    knots = flow.config.age_knots
    started = time.perf_counter()
    transport, history = train_transport(
        x,
        train.ages,
        train.genders,
        train.races,
        knots,
        steps=args.steps,
        adversary_weight=args.adversary_weight,
        blocks=args.blocks,
        hidden=args.hidden,
        heldout=(x_heldout, heldout.ages, heldout.genders, heldout.races),
    )
    facts = {
        "trained_on": f"{args.data} split train: {len(train)} of {all_train} faces, drawn age-balanced",
        "flow_sha256": digest,
        "steps": args.steps,
        "adversary_weight": args.adversary_weight,
        "train_seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "heldout": history[-1],
    }
    out.mkdir(parents=True, exist_ok=True)
    save_transport(out, transport, basis, facts)
    print(f"wrote {out / TRANSPORT_WEIGHTS} and {out / TRANSPORT_CONFIG}")
    if args.select:
        if not (out / POSTHOC_WEIGHTS).exists():
            raise SystemExit(f"{out} has no {POSTHOC_WEIGHTS} to read ages with")
        old = json.loads((out / TRAJECTORY).read_text()) if (out / TRAJECTORY).exists() else {}
        strengths = [float(s) for s in args.level_strengths.split(",")]
        trajectory = TransportTrajectory(
            flow,
            load_file(str(out / POSTHOC_WEIGHTS)),
            transport,
            basis,
            strengths,
            old.get("age_range", (1.0, 90.0)),
            old.get("keep_skin_tone", True),
        )
        save_trajectory(out, trajectory)


if __name__ == "__main__":
    main()
