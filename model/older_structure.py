"""An edit toward an older age draws its new lines only where real faces of that age have them.

Moved far toward old age, the flow carves lines into a face wherever its latents put them: near-black gashes
round a dark-skinned boy's eyes and mouth, rings in a plain background, pale smears where a fold's lighter
side lands on smooth skin. The judges read those lines as age, so taking them all away costs judged years
(docs/EVALUATION.md). This rule keeps the edit's aging and drops what no aging face does. It splits the
flow's change into three bands of the 64 px face: broad (coarser than a `mid_sigma_64` px blur), mid (between
that and a `sigma_64` px blur) and fine (finer than `sigma_64`). The broad band (tone, shading, greying hair)
passes as it is. In the mid and fine bands the change passes

- as a deepening (up to `max_deepening` times) or softening of the face's own detail in that band, fitted
  pixel by pixel over a small area: folds the face has grow deeper, its texture stronger;
- as new darkening only where real faces of the target age are darker than at the face's own age (the fold
  template: the mean band of training faces at age knots, here as its lightness), by at most `fold_gain`
  times that difference, or next to the face's own strong dark features (within `grow_64` px of one whose
  detail lies at least `feature_depth` below its surroundings, by the rest of its depth);
- as new lightening likewise, where the template lightens (greying hair, a fold's lit side) or next to the
  face's own light features.

So eye sockets hollow and nasolabial folds, crow's feet and jowl lines deepen where real faces fold, and the
skin between them gets nothing new. A zero change stays exactly zero.

    python -m model.older_structure --weights DIR --data data/faces-tight

fits the template on the train split (about a minute), writes `older_structure.safetensors` into DIR and the
settings into DIR/editor.json (`older_structure`); `--off` removes it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from model.colour import LUMA, blur
from model.condition import age_weights

if TYPE_CHECKING:  # the editor loads a template but never the training set
    from model.data import FaceSet

OLDER_FILE = "older_structure.safetensors"
OLDER_KEY = "older_structure"  # editor.json: the settings below, and the template's knots
KNOT_STEP = 10.0


@dataclass(frozen=True)
class OlderSettings:
    """The rule's numbers; blurs and reaches in pixels of a 64 px face."""

    sigma_64: float = 3.0  # the fine band is finer than this blur
    mid_sigma_64: float = 12.0  # the mid band lies between the two blurs; coarser passes as it is
    area_sigma_64: float = 2.0  # the area over which the fine band's deepening is fitted
    max_deepening: float = 3.0  # the most the face's own detail may deepen (times its own)
    fold_gain: float = 6.0  # fine band: new darkening up to this times the template's
    fold_light_gain: float = 0.0  # fine band: new lightening up to this times the template's
    fold_grow_64: int = 1  # the fine template's reach
    grow_64: int = 2  # the reach of the face's own features
    feature_depth: float = 0.1  # a feature of the face: its detail at least this far from its surroundings
    mid_fold_gain: float = 3.0  # mid band: new darkening and lightening up to this times the template's
    mid_grow_64: int = 1  # the mid band's reach, for both the template and the face's own features

    @classmethod
    def from_dict(cls, values: dict) -> OlderSettings:
        names = cls.__dataclass_fields__
        return cls(**{k: type(getattr(cls(), k))(v) for k, v in values.items() if k in names})


@dataclass
class OlderStructure:
    """The fold template (the lightness of the fine and mid bands of the mean training face at each of
    `knots`: K x 1 x 64 x 64 each) and the rule's settings."""

    knots: np.ndarray
    fine: torch.Tensor
    mid: torch.Tensor
    settings: OlderSettings

    def template_change(self, bands: torch.Tensor, ages_from, ages_to, side: int) -> torch.Tensor:
        """N x 1 x side x side: the template's band at each target age less the one at each face's age."""
        knots = tuple(self.knots.tolist())

        def at(ages) -> torch.Tensor:
            weights = age_weights(torch.as_tensor(np.asarray(ages, np.float64)), knots).to(bands)
            return torch.einsum("nk,kchw->nchw", weights, bands)

        out = at(ages_to) - at(ages_from)
        return out if side == out.shape[-1] else F.interpolate(out, size=side, mode="bilinear", align_corners=False)

    def apply(self, before: torch.Tensor, after: torch.Tensor, ages_from, ages_to) -> torch.Tensor:
        """`after` (N x 3 x S x S, the faces `before` edited from `ages_from` toward older `ages_to`) with its
        mid and fine change kept only as far as the rule allows (the module's docstring)."""
        s = self.settings
        scale = before.shape[-1] / 64
        side = before.shape[-1]
        fine_folds = self.template_change(self.fine.to(before), ages_from, ages_to, side)
        mid_folds = self.template_change(self.mid.to(before), ages_from, ages_to, side)
        change = after - before
        coarse, broad = blur(change, s.sigma_64 * scale), blur(change, s.mid_sigma_64 * scale)
        face_coarse, face_broad = blur(before, s.sigma_64 * scale), blur(before, s.mid_sigma_64 * scale)
        fine = allowed_band(
            change - coarse,
            before - face_coarse,
            fine_folds,
            s.area_sigma_64 * scale,
            s.max_deepening,
            (s.fold_gain, s.fold_light_gain),
            reach(s.fold_grow_64, scale),
            reach(s.grow_64, scale),
            s.feature_depth,
        )
        mid = allowed_band(
            coarse - broad,
            face_coarse - face_broad,
            mid_folds,
            s.sigma_64 * scale,
            s.max_deepening,
            (s.mid_fold_gain, s.mid_fold_gain),
            reach(s.mid_grow_64, scale),
            reach(s.mid_grow_64, scale),
            s.feature_depth,
        )
        return (before + broad + mid + fine).clamp(0, 1)

    def settings_dict(self) -> dict:
        return {**asdict(self.settings), "knots": self.knots.tolist()}

    @classmethod
    def load(cls, folder: Path, values: dict) -> OlderStructure:
        tensors = load_file(str(Path(folder) / OLDER_FILE))
        knots = np.asarray(values["knots"], np.float64)
        return cls(knots, tensors["fine"], tensors["mid"], OlderSettings.from_dict(values))


def reach(pixels_64: int, scale: float) -> int:
    return max(1, round(pixels_64 * scale))


def allowed_band(
    change: torch.Tensor,
    own: torch.Tensor,
    folds: torch.Tensor,
    area_sigma: float,
    max_deepening: float,
    fold_gains: tuple[float, float],
    fold_reach: int,
    feature_reach: int,
    feature_depth: float,
) -> torch.Tensor:
    """What the rule keeps of one band of an edit's change (N x 3 x S x S), given the face's own detail in
    that band (`own`) and the fold template's change of lightness there (`folds`, N x 1 x S x S): the part
    along the face's own detail (a share from -1, its softening, to `max_deepening`, fitted over
    `area_sigma` pixels), and of the rest only the lightness that the template's change (times
    `fold_gains`, dark and light, within `fold_reach` pixels) or the face's own features nearby allow."""
    along = blur(change.mul(own).sum(1, keepdim=True), area_sigma)
    energy = blur(own.square().sum(1, keepdim=True), area_sigma)
    share = (along / (energy + 1e-5)).clamp(-1.0, max_deepening)
    residual = change - share * own
    weights = torch.tensor(LUMA, dtype=change.dtype, device=change.device).view(1, 3, 1, 1)
    feature, drawn = (own * weights).sum(1, keepdim=True), (residual * weights).sum(1, keepdim=True)
    near_folds = partial(F.max_pool2d, kernel_size=2 * fold_reach + 1, stride=1, padding=fold_reach)
    near_features = partial(F.max_pool2d, kernel_size=2 * feature_reach + 1, stride=1, padding=feature_reach)
    dark = torch.maximum(
        fold_gains[0] * near_folds((-folds).clamp(min=0)), (near_features(-feature) - feature_depth).clamp(min=0)
    )
    light = torch.maximum(
        fold_gains[1] * near_folds(folds.clamp(min=0)), (near_features(feature) - feature_depth).clamp(min=0)
    )
    allowed = torch.minimum(torch.maximum(drawn, -dark), light)
    kept = torch.where(drawn.abs() > 1e-6, allowed / torch.where(drawn.abs() > 1e-6, drawn, 1.0), 0.0)
    return share * own + kept * residual


def fit_older_structure(faces: FaceSet, settings: OlderSettings, knot_step: float = KNOT_STEP) -> OlderStructure:
    """The fold template of `faces` (64 px, the train split) at knots `knot_step` years apart from 0 to 90."""
    from model.age_template import knot_means

    knots = np.arange(0.0, 90.0 + knot_step / 2, knot_step)
    weights = torch.tensor(LUMA).view(1, 3, 1, 1)

    def bands(images: torch.Tensor) -> torch.Tensor:
        coarse, broad = blur(images, settings.sigma_64), blur(images, settings.mid_sigma_64)
        lightness = [
            ((images - coarse) * weights).sum(1, keepdim=True),
            ((coarse - broad) * weights).sum(1, keepdim=True),
        ]
        return torch.cat(lightness, 1)

    means = knot_means(faces, knots, bands)  # K x 2 x 64 x 64
    return OlderStructure(knots, means[:, :1].contiguous(), means[:, 1:].contiguous(), settings)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="the weights folder to write it into")
    parser.add_argument("--data", type=Path, default=Path("data/faces-tight"))
    parser.add_argument("--off", action="store_true", help="remove the rule from the weights folder")
    for name, field in OlderSettings.__dataclass_fields__.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(field.default), default=field.default)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = args.weights / "editor.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    if args.off:
        config.pop(OLDER_KEY, None)
        (args.weights / OLDER_FILE).unlink(missing_ok=True)
        path.write_text(json.dumps(config, indent=2) + "\n")
        print(f"removed {OLDER_KEY} from {args.weights}")
        return
    from model.data import load_faces

    settings = OlderSettings(**{name: getattr(args, name) for name in OlderSettings.__dataclass_fields__})
    faces = load_faces(args.data, 64, "train")
    rule = fit_older_structure(faces, settings)
    save_file({"fine": rule.fine, "mid": rule.mid}, str(args.weights / OLDER_FILE))
    config[OLDER_KEY] = rule.settings_dict()
    path.write_text(json.dumps(config, indent=2) + "\n")
    change = rule.fine[-2] - rule.fine[2]
    print(
        f"fitted on {len(faces)} train faces: knots {rule.knots[0]:g}-{rule.knots[-1]:g}; the fine band's 80-minus-20 "
        f"change of lightness {float(change.min()):.3f} to {float(change.max()):.3f}; wrote {OLDER_FILE} and "
        f"{OLDER_KEY} into {args.weights}"
    )


if __name__ == "__main__":
    main()
