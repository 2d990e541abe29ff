"""An aging template from real faces: where faces of each age are darker or lighter, at the scale of folds.

The flow's edit carves new lines into smooth skin, and the judges read those lines as age; held to a depth
(the patch control's line limit) the faces come back clean and read younger (docs/EVALUATION.md, seventh
session). The template gives some of that age back in the places real faces have it: the mean, over the
training faces, of each aligned face's detail band (its 64 px face less a `sigma_64` px blur), at age knots
`knot_step` years apart. An edit from age a to age b adds `strength` times T(b) - T(a) over the skin, where
T is the template interpolated between knots: the eye sockets and nasolabial folds of the older age, or the
smoother skin of the younger one. No change of age, no change: a zero edit stays exact.

    python -m model.age_template --weights DIR --data data/faces-tight --older 2.5 --younger 0 --relative-to 0.58

writes `age_template.safetensors` into DIR and its settings into DIR/editor.json (`age_template`). With
`--relative-to L` the folds are relative to each face's own lightness: full depth on skin of lightness L and
above, as much shallower on darker skin. Measured and not shipped in the seventh session (absolute, beside
the line limit); shipped as above since the eleventh, beside the rule for older edits (model.older_structure):
docs/EVALUATION.md.
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

from model.colour import LUMA, blur
from model.condition import age_weights
from model.fine_detail import highpass
from model.masks import face_skin_mask

if TYPE_CHECKING:  # the editor loads a template but never the training set
    from model.data import FaceSet

TEMPLATE_FILE = "age_template.safetensors"
# editor.json key: {"older": strength, "younger": strength, "sigma_64": blur, "knots": [ages]}
TEMPLATE_KEY = "age_template"
SIGMA_64 = 2.5  # the blur that leaves the folds' scale in the band (a finer band ages less: EVALUATION)
KNOT_STEP = 10.0


@dataclass
class AgeTemplate:
    """The template's bands (knots x 3 x 64 x 64) at `knots` (ages, years), and the strengths of older and
    younger edits."""

    knots: np.ndarray
    bands: torch.Tensor
    older: float
    younger: float
    # with a lightness here, the template is relative to each face's own: where the face's skin is darker than
    # this, its folds are as much shallower (a fold shades skin by a share of its light, so dark skin gets no
    # near-black folds); None: the same depth on every face
    relative_to: float | None = None

    def at(self, ages, side: int) -> torch.Tensor:
        """T(age) for each of N ages: N x 3 x side x side (linear between knots, flat beyond the ends)."""
        weights = age_weights(torch.as_tensor(np.asarray(ages, np.float64)), tuple(self.knots.tolist()))
        out = torch.einsum("nk,kchw->nchw", weights, self.bands)
        return out if side == out.shape[-1] else F.interpolate(out, size=side, mode="bilinear", align_corners=False)

    def change(self, ages_from, ages_to, side: int, framing: str, faces: torch.Tensor | None = None) -> torch.Tensor:
        """What an edit from each face's age to its target adds: N x 3 x side x side, exactly zero for a face
        whose age does not change. `faces` (N x 3 x side x side): the faces, which a relative template needs."""
        ages_from, ages_to = np.asarray(ages_from, np.float64), np.asarray(ages_to, np.float64)
        strength = np.where(ages_to > ages_from, self.older, np.where(ages_to < ages_from, self.younger, 0.0))
        skin = face_skin_mask(side, framing)
        difference = self.at(ages_to, side) - self.at(ages_from, side)
        out = torch.from_numpy(strength).float()[:, None, None, None] * difference * skin
        if self.relative_to is not None:
            if faces is None:
                raise ValueError("a relative age template needs the faces")
            weights = torch.tensor(LUMA, dtype=faces.dtype, device=faces.device).view(1, 3, 1, 1)
            lightness = blur((faces * weights).sum(1, keepdim=True), 2.0 * side / 64)
            out = out.to(faces) * (lightness / self.relative_to).clamp(max=1.0)
        return out

    def settings(self, sigma_64: float) -> dict:
        out = {"older": self.older, "younger": self.younger, "sigma_64": sigma_64, "knots": self.knots.tolist()}
        return out if self.relative_to is None else {**out, "relative_to": self.relative_to}

    @classmethod
    def load(cls, folder: Path, settings: dict) -> AgeTemplate:
        bands = load_file(str(Path(folder) / TEMPLATE_FILE))["bands"]
        knots = np.asarray(settings["knots"], np.float64)
        relative = settings.get("relative_to")
        return cls(
            knots,
            bands,
            float(settings["older"]),
            float(settings["younger"]),
            None if relative is None else float(relative),
        )


def fit_template(faces: FaceSet, sigma_64: float = SIGMA_64, knot_step: float = KNOT_STEP, batch: int = 512):
    """The knots and the mean detail band of `faces` (64 px) at each (`knot_means`)."""
    knots = np.arange(0.0, 90.0 + knot_step / 2, knot_step)
    return knots, knot_means(faces, knots, lambda images: highpass(images, sigma_64), batch)


def knot_means(faces: FaceSet, knots, transform=None, batch: int = 512) -> torch.Tensor:
    """Knots x C x S x S: the mean of `faces` (S px, C = 3; or as many channels as `transform` gives, each
    batch passed through it where given) at each knot, every face weighted by its share of the two knots around its age
    (`model.condition.age_weights`; ages beyond the last knot count as it)."""
    knots = tuple(float(k) for k in knots)
    sums = None
    totals = torch.zeros(len(knots), dtype=torch.float64)
    for start in range(0, len(faces), batch):
        index = np.arange(start, min(start + batch, len(faces)))
        images = faces.batch(index)
        band = (images if transform is None else transform(images)).double()
        weights = age_weights(torch.from_numpy(faces.ages[index]), knots).double()
        step = torch.einsum("nk,nchw->kchw", weights, band)
        sums = step if sums is None else sums + step
        totals += weights.sum(0)
    if sums is None:
        raise ValueError("no faces to average")
    return (sums / totals.clamp(min=1e-9)[:, None, None, None]).float()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="the weights folder to write it into")
    parser.add_argument("--data", type=Path, default=Path("data/faces-tight"))
    parser.add_argument("--older", type=float, default=3.0, help="strength of the template for older edits")
    parser.add_argument("--younger", type=float, default=1.0, help="and for younger ones")
    parser.add_argument("--sigma-64", type=float, default=SIGMA_64)
    parser.add_argument(
        "--relative-to",
        type=float,
        default=None,
        help="make the folds relative to each face's own lightness: full depth at this skin lightness (0-1) "
        "and above, shallower on darker skin",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from model.data import load_faces

    faces = load_faces(args.data, 64, "train")
    knots, bands = fit_template(faces, args.sigma_64)
    save_file({"bands": bands.contiguous()}, str(args.weights / TEMPLATE_FILE))
    template = AgeTemplate(knots, bands, args.older, args.younger, args.relative_to)
    path = args.weights / "editor.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    config[TEMPLATE_KEY] = template.settings(args.sigma_64)
    path.write_text(json.dumps(config, indent=2) + "\n")
    spread = float((bands[-2] - bands[2]).abs().max())
    print(
        f"fitted on {len(faces)} train faces: knots {knots[0]:g}-{knots[-1]:g}; largest 80-minus-20 difference "
        f"{spread:.3f}; wrote {TEMPLATE_FILE} and {TEMPLATE_KEY} into {args.weights}"
    )


if __name__ == "__main__":
    main()
