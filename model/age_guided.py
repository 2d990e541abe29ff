"""The post-hoc age path refitted through the frozen flow's decoder, guided in image space.

The post-hoc path (`model.age_fit`) is the latents' mean change with age. Moved along it as far as an age
needs, the flow draws that change as deep dark lines and pale smears on many faces (docs/EVALUATION.md, "v2,
fifth session"): the mean of the latents is not a mean of faces. Here a correction to the path's top and
middle levels is learned by decoding training faces along the corrected path as the editor does (finer
levels carried, the skin-tone and patch controls applied; not the gamut step, the line limit or the guard's
search), and asking three things of what comes out:

- that an age estimator of its own (`GuideEstimator`, trained here on the training split only, sharing
  nothing with bench.judges' judges: another architecture, and its own seed) read it as old as real faces of
  the target age read (its reading curve on training faces it did not train on);
- that the change hold no lines deeper than `LINE_DEPTH` from its median over the skin (the depth of the
  gashes is what makes them visible; shallower folds pass);
- that the flow rate it no less likely than the guard allows (editor.json's likelihood guard): the flow's
  own log-density is the realism term.

The correction is shared by every face (a path, not a per-face network): it would ship as the path tensors
of `age_posthoc.safetensors` and cost nothing at run time. Measured and not shipped (docs/EVALUATION.md,
seventh session): the guide comes to read the edits at their target while the judges read them younger than
the fitted path's. Training resumes from its state file (the corrections, the optimizer and the step; the
batches after a resume come from a seed of their own):

    python -m model.age_guided --weights weights --data data/faces-tight --run runs/guided-v1 --threads 1
    python -m model.age_guided --weights weights --data data/faces-tight --run runs/guided-v1 --export DIR

(`--export` writes DIR as a copy of the weights folder with the refitted path, for bench.edit_quality.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from model.age import POSTHOC_WEIGHTS, TRAJECTORY, PosthocTrajectory, load_trajectory
from model.checkpoint import load_flow
from model.colour import (
    channel_length,
    clipped_departure,
    keep_cheek_colour,
    keep_skin_tone,
    limit_patches,
    no_added_tint,
)
from model.condition import age_weights, condition_vector
from model.data import FaceSet, age_balance_weights, load_faces
from model.editor import EDITOR_CONFIG, GUARD_KEY, PATCH_LIMIT_KEY, subset_reading
from model.masks import face_skin_mask

GUIDE_FILE = "guide.safetensors"
STATE_FILE = "state.pt"
LINE_DEPTH = 0.1  # RGB length of the change's departure from its median over the skin that a line may reach
CORRECTED_LEVELS = 2  # the top and middle levels are corrected: the finest only carries detail


class GuideEstimator(nn.Module):
    """Age in years from an aligned 64 px face: 5 x 5 convolutions with group norm, unlike the judges."""

    side = 64

    def __init__(self, mean_age: float = 35.0) -> None:
        super().__init__()
        widths = (3, 32, 64, 128, 192)
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 5, 2, 2), nn.GroupNorm(8, c_out), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], 1))
        self.register_buffer("mean_age", torch.tensor(float(mean_age)))

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        if faces.shape[-1] != self.side:
            faces = F.interpolate(faces, size=self.side, mode="area")
        return self.mean_age + 20.0 * self.net((faces - 0.5) / 0.25)[:, 0]


def train_guide(
    faces: FaceSet, index: np.ndarray, epochs: int, seed: int, log=print, batch: int = 64
) -> GuideEstimator:
    """The guide trained on `faces[index]`: age-balanced, flipped and shifted by up to 3 pixels."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = GuideEstimator(float(faces.ages[index].mean()))
    ages = torch.from_numpy(faces.ages).float()
    weights = torch.zeros(len(faces))
    weights[torch.from_numpy(index)] = age_balance_weights(faces.ages[index])
    steps = len(index) // batch
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 2e-3, total_steps=epochs * steps)
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(index)
        for step in range(steps):
            idx = np.sort(order[step * batch : (step + 1) * batch])
            x = faces.batch(idx)
            x = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, x.flip(3), x)
            dx, dy = (int(v) for v in rng.integers(0, 7, 2))
            x = F.pad(x, (3,) * 4, mode="replicate")[:, :, dy : dy + 64, dx : dx + 64]
            loss = (F.smooth_l1_loss(model(x), ages[idx], beta=2.0, reduction="none") * weights[idx]).mean() / 10
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        log(f"guide epoch {epoch + 1}/{epochs}: last batch loss {loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def reading_table(guide: GuideEstimator, faces: FaceSet, index: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    """The guide's mean reading of real faces (`index`, faces it did not train on) at each whole age 0-100,
    Gaussian-weighted over neighbouring labelled ages: what an edit to that age should read."""
    readings = torch.cat([guide(faces.batch(index[i : i + 256])) for i in range(0, len(index), 256)]).numpy()
    labels = faces.ages[index].astype(np.float64)
    grid = np.arange(101, dtype=np.float64)
    w = np.exp(-0.5 * ((grid[:, None] - labels[None]) / sigma) ** 2)
    return (w * readings[None]).sum(1) / w.sum(1)


class GuidedPath(nn.Module):
    """The path's corrections (knots x C x H x W per corrected level), added to the fitted path."""

    def __init__(self, tensors: dict[str, torch.Tensor], levels: int = CORRECTED_LEVELS) -> None:
        super().__init__()
        names = sorted((k for k in tensors if k.startswith("level") and k.endswith("_age")), key=lambda k: int(k[5:-4]))
        self.corrections = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros_like(tensors[name])) for name in names[-levels:]}
        )

    def tensors(self, base: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v + self.corrections[k] if k in self.corrections else v for k, v in base.items()}


def decode_along(
    trajectory: PosthocTrajectory,
    tensors,
    faces,
    reading,
    target: np.ndarray,
    framing: str,
    patch,
    top_offset: torch.Tensor | None = None,
):
    """`PosthocTrajectory.move` (details carried) with `tensors` as the path, differentiable in them (and in
    `top_offset`, each face's own offset of the top latent, where given), then the editor's colour and patch
    controls (`AgeEditor._moved` without the gamut step); and the decoding's exact bits/dim."""
    flow = trajectory.flow
    knots = flow.config.age_knots
    delta = (age_weights(torch.as_tensor(target), knots) - age_weights(torch.as_tensor(reading.ages), knots)).float()
    shifts = [
        s * torch.einsum("nk,kchw->nchw", delta, tensors[f"level{level}_age"])
        for level, s in enumerate(trajectory._strengths(reading, target, delta.device))
    ]
    if top_offset is not None:
        shifts[-1] = shifts[-1] + top_offset
    current, wanted = condition_vector(flow.config, reading.ages), condition_vector(flow.config, target)
    with torch.no_grad():
        eps = flow.standardize_latents(reading.latents, reading.contexts, current)
    after, bits = flow.generate(eps, [wanted] * (len(eps) - 1) + [current], offsets=shifts, with_bits=True)
    after = keep_skin_tone(faces, no_added_tint(faces, after), framing)
    after = limit_patches(faces, after, *patch, framing=framing).clamp(0, 1)
    return keep_cheek_colour(faces, after, framing=framing), bits


def line_energy(before: torch.Tensor, after: torch.Tensor, skin: torch.Tensor) -> torch.Tensor:
    """Per face, the mean square over the skin of the change's part beyond `LINE_DEPTH` from its median: how
    much of an edit is lines deeper than the line limit allows."""
    line = channel_length(clipped_departure(after - before, LINE_DEPTH, skin))[:, 0]
    return (line**2 * skin).sum((1, 2)) / skin.sum()


def sample_targets(ages: np.ndarray, rng: np.random.Generator, low: float, high: float) -> np.ndarray:
    """Half the batch +30 or -25 years (the edits the service is asked most), half any age in range."""
    step = np.where(rng.random(len(ages)) < 0.5, 30.0, -25.0)
    anywhere = rng.uniform(low, high, len(ages))
    target = np.where(rng.random(len(ages)) < 0.5, ages + step, anywhere)
    target = np.clip(target, low, high)
    return np.where(np.abs(target - ages) < 5, np.clip(ages + 30, low, high), target)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--data", type=Path, default=Path("data/faces-tight"))
    parser.add_argument("--run", type=Path, required=True, help="the run's folder (state, guide, log)")
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--line-weight", type=float, default=100.0)
    parser.add_argument("--bits-weight", type=float, default=10.0)
    parser.add_argument("--size-weight", type=float, default=0.1, help="on the correction's mean square")
    parser.add_argument("--guide-epochs", type=int, default=8)
    parser.add_argument("--save-every", type=float, default=180.0, help="seconds between state files")
    parser.add_argument("--export", type=Path, default=None, help="write a weights folder with the refitted path")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--guide-threads", type=int, default=0, help="threads while the guide trains (0: --threads)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    args.run.mkdir(parents=True, exist_ok=True)
    log_file = open(args.run / "log.txt", "a")

    def log(text: str) -> None:
        print(text, flush=True)
        log_file.write(text + "\n")
        log_file.flush()

    flow = load_flow(args.weights).eval()
    for p in flow.parameters():
        p.requires_grad_(False)
    trajectory = load_trajectory(args.weights, flow)
    if not isinstance(trajectory, PosthocTrajectory) or trajectory.details != "carried":
        raise SystemExit("the weights' trajectory must be post-hoc with details carried")
    base = {k: v.float() for k, v in trajectory.tensors.items()}
    path = GuidedPath(base)
    state_path = args.run / STATE_FILE
    state = torch.load(state_path, weights_only=True) if state_path.exists() else None
    if state is not None:
        path.load_state_dict(state["path"])
    if args.export is not None:
        export = args.export.resolve()
        for kept in (args.weights.resolve(), args.run.resolve()):
            if export == kept or kept in export.parents or export in kept.parents:
                raise SystemExit(f"--export {args.export} would overwrite {kept}: choose a folder of its own")
        if state is None:
            raise SystemExit(f"{state_path} does not exist: there is nothing to export")
        if args.export.exists():
            shutil.rmtree(args.export)
        shutil.copytree(args.weights, args.export)
        tensors = {k: v.detach().contiguous() for k, v in path.tensors(base).items()}
        save_file(tensors, str(args.export / POSTHOC_WEIGHTS))
        meta = json.loads((args.export / TRAJECTORY).read_text())
        meta["guided"] = {"run": str(args.run), "step": int(state["step"])}
        (args.export / TRAJECTORY).write_text(json.dumps(meta, indent=2))
        log(f"exported step {meta['guided']['step']} into {args.export}")
        return

    faces = load_faces(args.data, 64, "train")
    rng_split = np.random.default_rng(1234)
    order = rng_split.permutation(len(faces))
    calibration, guide_train = np.sort(order[: len(order) // 20]), np.sort(order[len(order) // 20 :])
    guide = GuideEstimator()
    if (args.run / GUIDE_FILE).exists():
        guide.load_state_dict(load_file(str(args.run / GUIDE_FILE)))
    elif state is not None:
        raise SystemExit(f"{state_path} was trained under {args.run / GUIDE_FILE}, which is missing")
    else:
        log(f"training the guide on {len(guide_train)} train faces, {args.guide_epochs} epochs")
        torch.set_num_threads(args.guide_threads or args.threads)
        guide = train_guide(faces, guide_train, args.guide_epochs, args.seed + 7, log)
        torch.set_num_threads(args.threads)
        save_file(guide.state_dict(), str(args.run / GUIDE_FILE))
    guide.eval()
    for p in guide.parameters():
        p.requires_grad_(False)
    table = reading_table(guide, faces, calibration)
    mae = float(np.abs(table[np.clip(faces.ages[calibration].astype(int), 0, 100)] - faces.ages[calibration]).mean())
    log(
        f"guide reading curve on {len(calibration)} calibration faces: 5 -> {table[5]:.1f}, 30 -> {table[30]:.1f}, "
        f"60 -> {table[60]:.1f}, 85 -> {table[85]:.1f} (curve MAE {mae:.1f} y)"
    )
    wanted_reading = torch.from_numpy(table).float()

    settings = json.loads((args.weights / EDITOR_CONFIG).read_text())
    framing = settings["model"]["framing"]
    if not settings.get(PATCH_LIMIT_KEY):
        raise SystemExit(f"{args.weights / EDITOR_CONFIG} has no {PATCH_LIMIT_KEY}: the editor's controls are needed")
    patch = (settings[PATCH_LIMIT_KEY]["max_departure"], settings[PATCH_LIMIT_KEY]["sigma_64"])
    guard = settings[GUARD_KEY]
    skin = face_skin_mask(64, framing)
    optimizer = torch.optim.Adam(path.parameters(), lr=args.lr)
    step, rng = 0, np.random.default_rng(args.seed)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        step = int(state["step"])
        rng = np.random.default_rng(args.seed + step)  # the batches after a resume: a seed of their own
    low, high = trajectory.age_range
    last_save, start, sums, counted = time.time(), time.time(), np.zeros(4), 0
    while step < args.steps:
        idx = np.sort(rng.choice(guide_train, args.batch, replace=False))
        x = faces.batch(idx)
        with torch.no_grad():
            latents, contexts, logdet = flow.flow_forward(x - 0.5)
            reading = trajectory.read(latents, contexts)
            own_bits = flow.encoding_bits_per_dim(latents, contexts, logdet)
        target = sample_targets(reading.ages, rng, low, high)
        after, bits = decode_along(trajectory, path.tensors(base), x, reading, target, framing, patch)
        ok = (torch.isfinite(after).flatten(1).all(1) & torch.isfinite(bits)).numpy()
        if not ok.any():
            continue
        if not ok.all():  # a decoding that overflows would give the whole batch NaN gradients: decode the rest
            keep = np.flatnonzero(ok)
            x, own_bits, target = x[keep], own_bits[keep], target[keep]
            reading = subset_reading(reading, keep)
            after, bits = decode_along(trajectory, path.tensors(base), x, reading, target, framing, patch)
        wanted = wanted_reading[torch.from_numpy(np.clip(np.rint(target), 0, 100).astype(np.int64))]
        read = guide(after)
        age_loss = F.smooth_l1_loss(read, wanted, beta=2.0, reduction="none") / 10
        line_loss = line_energy(x, after, skin)
        allowed = torch.maximum(torch.tensor(guard["max_bits_per_dim"]), own_bits + guard["max_rise_bits_per_dim"])
        # log: a decoding near overflow is rated at up to 1e9 bits/dim, which would swamp every other term
        bits_loss = torch.log1p(F.relu(bits - allowed))
        size_loss = sum((c**2).mean() for c in path.corrections.values())
        per_face = age_loss + args.line_weight * line_loss + args.bits_weight * bits_loss
        loss = per_face.mean() + args.size_weight * size_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        sums += [age_loss.mean().item() * 10, line_loss.mean().item(), bits_loss.mean().item(), size_loss.item()]
        counted += 1
        if step % 25 == 0:
            a, li, b, s = sums / counted
            log(
                f"step {step}: age error {a:.2f} y, line {li:.5f}, bits over {b:.4f}, size {s:.5f}, "
                f"{(time.time() - start) / counted:.2f} s/step"
            )
            sums[:], start, counted = 0, time.time(), 0
        if time.time() - last_save > args.save_every or step == args.steps:
            tmp = state_path.with_suffix(".tmp")
            torch.save({"path": path.state_dict(), "optimizer": optimizer.state_dict(), "step": step}, tmp)
            tmp.replace(state_path)
            last_save = time.time()
            log(f"saved step {step}")


if __name__ == "__main__":
    main()
