"""Which level of the flow an edit's look comes from: the figure faces of bench.figures at a target age,
decoded by the flow as the post-hoc path moves them (before any colour, patch or gamut control, and without
the guard), with every level's shift, then with one level's shift alone.

    python -m bench.level_figure [--weights weights] [--data data/faces-tight] [--target 50] [--target 5] \\
        [--out docs/v2/level_sources.png]

The finer levels' latents are carried (standardized under the face's age, drawn again under the target age
and the new context), as the shipped path does, so "top only" also redraws the finer levels under the moved
top latent; "mid only" and "fine only" leave the top latent where it was.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.imaging import tensor_to_image
from bench.figures import figure_faces, grid_image
from model.age import PosthocTrajectory
from model.data import load_faces
from model.editor import AgeEditor

SIDE = 128  # each 64 px decode shown at twice its size, pixels kept square
LEVEL_NAMES = ("fine", "mid", "top")


def only(strengths: list[float], level: int) -> list[float]:
    return [s if i == level else 0.0 for i, s in enumerate(strengths)]


def with_strengths(trajectory: PosthocTrajectory, older: list[float], younger: list[float]) -> PosthocTrajectory:
    moved = copy.copy(trajectory)
    moved.level_strengths, moved.younger_level_strengths = list(older), list(younger)
    return moved


def shown(faces: torch.Tensor) -> list[np.ndarray]:
    return [tensor_to_image(face) for face in torch.nn.functional.interpolate(faces, size=SIDE, mode="nearest")]


@torch.no_grad()
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--data", type=Path, default=Path("data/faces-tight"))
    parser.add_argument("--target", type=float, action="append", default=None, help="target ages (50 and 5)")
    parser.add_argument("--seed", type=int, default=0, help="chooses the faces, as bench.edit_quality's")
    parser.add_argument("--out", type=Path, default=Path("docs/v2/level_sources.png"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    editor = AgeEditor.from_dir(args.weights)
    trajectory = editor.trajectory
    if not isinstance(trajectory, PosthocTrajectory):
        raise SystemExit("the weights' age path is not a post-hoc one")
    heldout = load_faces(args.data, 64, "heldout")
    rows = figure_faces(heldout, args.seed)
    faces = heldout.batch(rows)
    latents, contexts, _ = editor.flow.flow_forward(faces - 0.5)
    reading = trajectory.read(latents, contexts)
    older = list(trajectory.level_strengths)
    younger = list(trajectory.younger_level_strengths or older)
    blocks = [("held-out", ["photo"], [shown(faces)])]
    for target in args.target or [50.0, 5.0]:
        ages = np.full(len(rows), float(target))
        variants = [("every level", older, younger)] + [
            (f"{name} only", only(older, level), only(younger, level))
            for level, name in reversed(list(enumerate(LEVEL_NAMES)))
        ]
        columns = [shown(with_strengths(trajectory, o, y).move(faces, reading, ages)) for _, o, y in variants]
        blocks.append((f"to {target:g}, raw flow decode", [name for name, _, _ in variants], columns))
    labels = [f"{heldout.ages[i]:.0f} {heldout.genders[i][0].upper()} {heldout.races[i] or ''}".strip() for i in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image: Image.Image = grid_image(blocks, labels)
    image.save(args.out, optimize=True)
    print(args.out)


if __name__ == "__main__":
    main()
