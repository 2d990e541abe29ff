"""The shape of a face at each age: a smooth warp of the face's own pixels, from prototypes of real faces.

A child's mouth and chin sit closer to the eyes than an adult's, the nose is shorter and the face rounder;
with age the lower face lengthens and the eyes narrow. The flow's edit draws these only as far as its top
latent moves, and moving it that far also draws blotches (docs/EVALUATION.md). A warp moves the face's own
pixels and draws nothing new, so it cannot blotch: the shape change of prototype-based aging (the average
faces of each age, registered to one another).

Fitting: the mean aligned face (64 px, training split) at each age knot, every face weighted by its share of
the two knots round its age (`model.condition.age_weights`), is registered to the reference knot's: a
displacement field on a coarse `grid` x `grid` lattice (bicubic between its points, so smooth by
construction, with a penalty on neighbouring differences) that makes the knot's local contrast match the
reference's, coarse to fine. D(age) (linear between knots) says where a point of the reference face lies in
a face of that age. An edit from age a to age b samples the crop at y + gain x (D(a) - D(b))(y), the field
faded to zero at the paste-back mask's edge so that nothing moves outside the face. No change of age, no
change: a zero edit stays exact.

    python -m model.age_shape --weights DIR --data data/faces-tight --gain 2

writes `age_shape.safetensors` into DIR and its settings into DIR/editor.json (`age_shape`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from model.age_template import knot_means
from model.colour import LUMA, blur
from model.condition import age_weights
from model.masks import face_mask

if TYPE_CHECKING:  # the editor loads the fields but never the training set
    from model.data import FaceSet

SHAPE_FILE = "age_shape.safetensors"
# editor.json key: {"knots": [ages], "reference": age, "grid": G, "gain": g, "framing": ..., "faces": N}
SHAPE_KEY = "age_shape"
KNOTS = (0.0, 3.0, 6.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0)
REFERENCE = 30.0
GRID = 5  # lattice points a side: the shape of the face, not the shape of a smile
SMOOTHNESS = 3.0  # penalty on neighbouring lattice differences
SCALES = (2.0, 1.0)  # blur (64 px) of the coarse-to-fine registration
STEPS = 120  # Adam steps at each scale
GAIN = 2.0  # the fitted warp of blurred mean faces is shallower than a face's own change (EVALUATION)


@dataclass
class AgeShape:
    """Displacement fields (knots x 2 x G x G, in the crop's [-1, 1] coordinates, x then y) of the face at
    each of `knots` (years) relative to the reference age, and the gain an edit applies them with."""

    knots: np.ndarray
    fields: torch.Tensor
    gain: float
    framing: str

    def at(self, ages) -> torch.Tensor:
        """D(age) for N ages: N x 2 x G x G (linear between knots, flat beyond the ends)."""
        weights = age_weights(torch.as_tensor(np.asarray(ages, np.float64)), tuple(self.knots.tolist()))
        return torch.einsum("nk,kcgh->ncgh", weights, self.fields)

    def displacement(self, ages_from, ages_to, side: int) -> torch.Tensor:
        """Where each pixel of a side x side crop taken from `ages_from` to `ages_to` is sampled from,
        less where it is: N x side x side x 2, in [-1, 1] units, zero at the paste mask's edge."""
        lattice = self.gain * (self.at(ages_from) - self.at(ages_to))
        field = F.interpolate(lattice, size=side, mode="bicubic", align_corners=True)
        return (field * face_mask(side, self.framing)).permute(0, 2, 3, 1)

    def warp(self, crops: torch.Tensor, ages_from, ages_to) -> torch.Tensor:
        """N crops (N x 3 x S x S) with their faces' shape taken from `ages_from` to `ages_to`; a crop whose
        age does not change comes back exactly as it was."""
        ages_from, ages_to = np.asarray(ages_from, np.float64), np.asarray(ages_to, np.float64)
        moved = np.flatnonzero(ages_from != ages_to)
        out = crops.clone()
        if len(moved):
            side = crops.shape[-1]
            offset = self.displacement(ages_from[moved], ages_to[moved], side).to(crops)
            grid = identity_grid(side, crops.device, crops.dtype) + offset
            out[moved] = F.grid_sample(crops[moved], grid, mode="bilinear", padding_mode="border", align_corners=True)
        return out

    def settings(self, faces: int) -> dict:
        return {
            "knots": self.knots.tolist(),
            "reference": REFERENCE,
            "grid": int(self.fields.shape[-1]),
            "gain": self.gain,
            "framing": self.framing,
            "faces": faces,
        }

    @classmethod
    def load(cls, folder: Path, settings: dict) -> AgeShape:
        fields = load_file(str(Path(folder) / SHAPE_FILE))["fields"]
        knots = np.asarray(settings["knots"], np.float64)
        return cls(knots, fields.float(), float(settings["gain"]), str(settings["framing"]))


def identity_grid(side: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """1 x side x side x 2: each pixel's own place in grid_sample's [-1, 1] coordinates (corners aligned)."""
    line = torch.linspace(-1, 1, side, device=device, dtype=dtype)
    ys, xs = torch.meshgrid(line, line, indexing="ij")
    return torch.stack([xs, ys], -1)[None]


def local_contrast(luma: torch.Tensor, sigma: float) -> torch.Tensor:
    """What registration matches: the luma blurred by `sigma`, less its broad shading, over its local
    spread, so that a darker or lighter mean face registers by its features and not by its tone."""
    x = blur(luma, sigma) if sigma > 0 else luma
    band = x - blur(x, 5.0)
    return band / (blur(band * band, 5.0).sqrt() + 0.01)


def register(
    moving: torch.Tensor, fixed: torch.Tensor, grid: int = GRID, smoothness: float = SMOOTHNESS
) -> torch.Tensor:
    """The lattice (1 x 2 x G x G) whose field warps `moving` (1 x 1 x S x S luma) onto `fixed`."""
    side = fixed.shape[-1]
    base = identity_grid(side)
    lattice = torch.zeros(1, 2, grid, grid, requires_grad=True)
    optimizer = torch.optim.Adam([lattice], lr=0.003)
    for sigma in SCALES:
        target = local_contrast(fixed, sigma)
        for _ in range(STEPS):
            field = F.interpolate(lattice, size=side, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
            warped = F.grid_sample(moving, base + field, mode="bilinear", padding_mode="border", align_corners=True)
            loss = (local_contrast(warped, sigma) - target).pow(2).mean() + smoothness * (
                (lattice[..., 1:, :] - lattice[..., :-1, :]).pow(2).mean()
                + (lattice[..., :, 1:] - lattice[..., :, :-1]).pow(2).mean()
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return lattice.detach()


def fit_shape(faces: FaceSet, gain: float = GAIN, framing: str = "tight", knots=KNOTS, seed: int = 0) -> AgeShape:
    """Each knot's mean face registered to the reference knot's (`register`)."""
    torch.manual_seed(seed)
    means = knot_means(faces, knots, batch=1024)  # the mean face at each knot
    luma = (means * torch.tensor(LUMA)[:, None, None]).sum(1, keepdim=True)
    reference = list(knots).index(REFERENCE)
    fields = [
        torch.zeros(1, 2, GRID, GRID) if k == reference else register(luma[k : k + 1], luma[reference : reference + 1])
        for k in range(len(knots))
    ]
    return AgeShape(np.asarray(knots, np.float64), torch.cat(fields), gain, framing)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="the weights folder to write it into")
    parser.add_argument("--data", type=Path, default=Path("data/faces-tight"))
    parser.add_argument("--gain", type=float, default=GAIN)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from model.data import load_faces

    faces = load_faces(args.data, 64, "train")
    framing = json.loads((args.data / "report.json").read_text()).get("framing", "tight")
    shape = fit_shape(faces, args.gain, framing, KNOTS)
    save_file({"fields": shape.fields.contiguous()}, str(args.weights / SHAPE_FILE))
    path = args.weights / "editor.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    config[SHAPE_KEY] = shape.settings(len(faces))
    path.write_text(json.dumps(config, indent=2) + "\n")
    largest = float(shape.fields.abs().max()) * 32  # in pixels of a 64 px crop
    print(
        f"fitted on {len(faces)} train faces: {len(shape.knots)} knots, largest displacement {largest:.2f} px "
        f"(64 px crop) before the gain {shape.gain:g}; wrote {SHAPE_FILE} and {SHAPE_KEY} into {args.weights}"
    )


if __name__ == "__main__":
    main()
