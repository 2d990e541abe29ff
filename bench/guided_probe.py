"""Probe: each held-out face's top-latent move refined by a few gradient steps through the frozen decoder,
against the shipped edit of the same faces.

The start is the shipped edit's move (guard on: to the age the guard let it reach), decoded as the editor
decodes it without the gamut step; the top latent's offset is then moved to bring the guide's reading
(`model.age_guided.GuideEstimator`, trained on the training split by `python -m model.age_guided`) to its
reading of real faces of the target age, while the change's lines deeper than `LINE_DEPTH` are penalized (no
bits/dim term, and no guard runs on the refined faces: their bits/dim is reported). Both judges (bench.judges),
which the refinement never sees, then read the shipped and the refined faces, shown alike (the 64 px change
upsampled onto the 128 px crop under the paste mask, without the fine-detail steps):

    python -m bench.guided_probe --weights weights --data data/faces-tight --guide runs/guided-v1 \
        --estimator data/bench/age_estimator_tight --faces 24 --years 30 --steps 10 --figure FILE

Nothing of it runs in the service: it asks whether a per-face move exists that ages a face as far for the
judges without the deep lines, before a network is trained to make that move in one pass.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from bench.edit_quality import stratified
from bench.editors import build_editor
from bench.judges import load_or_train_judge, to_tensor
from model.age_guided import GUIDE_FILE, GuideEstimator, decode_along, line_energy, reading_table
from model.checkpoint import load_flow
from model.data import load_faces
from model.masks import face_mask, face_skin_mask


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--data", type=Path, default=Path("data/faces-tight"))
    parser.add_argument("--guide", type=Path, required=True, help="a model.age_guided run folder (its guide)")
    parser.add_argument("--estimator", type=Path, default=Path("data/bench/age_estimator_tight"))
    parser.add_argument("--faces", type=int, default=24)
    parser.add_argument("--years", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--line-weight", type=float, default=100.0)
    parser.add_argument("--figure", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    flow = load_flow(args.weights).eval()
    for p in flow.parameters():
        p.requires_grad_(False)
    editor = build_editor(
        flow,
        "posthoc",
        [0.5, 2, 4],
        args.weights,
        args.data,
        Path("data/bench/posthoc"),
        0,
        "carried",
        guard=True,
        younger=[0.5, 4, 5],
        detail_stage="off",
    )
    trajectory = editor.trajectory.trajectory
    framing = editor.framing
    guide = GuideEstimator()
    guide.load_state_dict(load_file(str(args.guide / GUIDE_FILE)))
    guide.eval()
    judges = {name: load_or_train_judge(name, args.estimator, args.data)[0] for name in ("cnn64", "resnet128")}
    for model in (guide, *judges.values()):
        for p in model.parameters():
            p.requires_grad_(False)
    train = load_faces(args.data, 64, "train")
    calibration = np.sort(np.random.default_rng(1234).permutation(len(train))[: len(train) // 20])
    curve = reading_table(guide, train, calibration)  # the guide's calibration faces (model.age_guided)

    heldout64, heldout128 = load_faces(args.data, 64, "heldout"), load_faces(args.data, 128, "heldout")
    chosen = stratified(heldout64.ages, args.faces, args.seed)
    faces, crops = heldout64.batch(chosen), to_tensor(heldout128.images[chosen])
    mask128, skin = face_mask(128, framing), face_skin_mask(64, framing)
    patch = editor.patch_limit

    def shown(after: torch.Tensor) -> torch.Tensor:
        change = F.interpolate(after - faces, size=128, mode="bilinear", align_corners=False)
        return (crops + change * mask128).clamp(0, 1)

    with torch.no_grad():
        shipped = editor.edit(faces, years=args.years)
        shipped_after = torch.stack([e.after for e in shipped])
        latents, contexts, _ = flow.flow_forward(faces - 0.5)
        reading = trajectory.read(latents, contexts)
    ages = reading.ages
    target = np.clip(ages + args.years, *trajectory.age_range)
    reached = np.array([e.age_after for e in shipped])  # where the guard stopped the shipped edit
    want = torch.from_numpy(curve[np.clip(np.rint(target), 0, 100).astype(int)]).float()
    path = {k: v.float() for k, v in trajectory.tensors.items()}

    def decode(offset: torch.Tensor) -> torch.Tensor:
        return decode_along(trajectory, path, faces, reading, reached, framing, patch, top_offset=offset)[0]

    top = latents[-1]
    offset = torch.zeros_like(top, requires_grad=True)
    optimizer = torch.optim.Adam([offset], lr=args.lr)
    moved = torch.from_numpy(np.abs(target - ages) > 0)[:, None, None, None]
    for _ in range(args.steps):
        after = decode(offset)
        loss = F.smooth_l1_loss(guide(after), want, beta=2.0, reduction="none") / 10
        loss = (loss + args.line_weight * line_energy(faces, after, skin)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            offset.mul_(moved)
    with torch.no_grad():
        refined = decode(offset)
        broken = ~torch.isfinite(refined).flatten(1).all(1)
        refined[broken] = shipped_after[broken]  # an overflowing refinement keeps the shipped edit
        rows = {}
        for name, after in (("original", faces), ("shipped", shipped_after), ("refined", refined)):
            view = shown(after)
            rows[name] = {
                **{judge: model(view)[0].numpy() for judge, model in judges.items()},
                "line": line_energy(faces, after, skin).numpy(),
                "bits": flow.exact_bits_per_dim(after).numpy(),
            }
    edited = np.abs(target - ages) > 0
    print(f"{args.faces} held-out faces, {args.years:+g} years, {args.steps} steps ({int(broken.sum())} kept shipped)")
    print(f"{'':10s} {'cnn64 change':>13s} {'resnet128 change':>17s} {'line energy':>12s} {'bits/dim':>9s}  (medians)")
    for name in ("shipped", "refined"):
        r, o = rows[name], rows["original"]
        print(
            f"{name:10s} {np.median((r['cnn64'] - o['cnn64'])[edited]):+13.1f} "
            f"{np.median((r['resnet128'] - o['resnet128'])[edited]):+17.1f} "
            f"{np.median(r['line'][edited]):12.5f} {np.median(r['bits'][edited]):9.3f}"
        )
    if args.figure is not None:
        columns = [crops, shown(shipped_after), shown(refined)]
        grid = torch.cat([torch.cat(list(c), 1) for c in columns], 2)
        image = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        args.figure.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(args.figure, optimize=True)
        print(f"figure: {args.figure} (columns: photo, shipped, refined)")


if __name__ == "__main__":
    main()
