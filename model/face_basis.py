"""The detail real faces can have: an edit's fine change, kept only as far as real faces' detail is made of it.

The flow's age edit moves the top latents far, and on some faces (a teenager of dark skin, a child, a
turned head) the decoder draws the new age's folds as a criss-cross of dark gashes and pale streaks that no
real face has; held to a depth (the patch control's line limit) they stay there, only fainter, and the
clean faces lose the folds the judges read as age (docs/EVALUATION.md, seventh session). The basis keeps
the pattern and not the depth: the principal components of the detail band (a face less its `sigma_64` px
blur, 64 px) of aligned training faces over the skin. An edit's change keeps its broad part (tone, shape)
as it is and, on the skin, only the projection of its detail band onto the `components` leading ones:
folds, creases and eye bags where faces have them, deepened as far as the edit deepens them; what no
combination of real faces' detail draws is dropped. A zero change stays exactly zero.

    python -m model.face_basis --weights DIR --data data/faces-tight --components 200

writes `face_basis.safetensors` into DIR and its settings into DIR/editor.json (`face_basis`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from model.fine_detail import highpass
from model.masks import face_skin_mask

if TYPE_CHECKING:  # the editor loads a basis but never the training set
    from model.data import FaceSet

BASIS_FILE = "face_basis.safetensors"
# editor.json key: {"components": K, "sigma_64": blur, "framing": ..., "faces": N, "seed": S}
BASIS_KEY = "face_basis"
SIGMA_64 = 4.0  # the band below it (tone, the face's shape) passes untouched
COMPONENTS = 200  # 400 keep the figures' gashes, 100 lose the folds the judges read as age (EVALUATION)
FIT_FACES = 6000


@dataclass
class FaceBasis:
    """K orthonormal components (K x 3 x 64 x 64, on the skin of a 64 px crop of `framing`) of real faces'
    detail band below `sigma_64` px."""

    components: torch.Tensor
    sigma_64: float
    framing: str

    def project(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """`after` (N x 3 x 64 x 64) with the detail band of its change from `before`, on the skin, replaced by
        that band's projection onto the basis; the change's broad part, and its detail off the skin (hair,
        background), pass as they are."""
        if after.shape[-1] != self.components.shape[-1]:
            raise ValueError(f"the basis is fitted at {self.components.shape[-1]} px, not {after.shape[-1]} px")
        change = after - before
        detail = highpass(change, self.sigma_64)
        skin = face_skin_mask(change.shape[-1], self.framing).to(change.device)
        basis = self.components.to(change.device).flatten(1)  # K x D
        kept = ((detail * skin).flatten(1) @ basis.T @ basis).view_as(detail)
        return before + (change - detail) + detail * (1 - skin) + kept

    def settings(self, faces: int, seed: int) -> dict:
        return {
            "components": int(self.components.shape[0]),
            "sigma_64": self.sigma_64,
            "framing": self.framing,
            "faces": faces,
            "seed": seed,
        }

    @classmethod
    def load(cls, folder: Path, settings: dict) -> FaceBasis:
        components = load_file(str(Path(folder) / BASIS_FILE))["components"][: int(settings["components"])]
        return cls(components.float(), float(settings["sigma_64"]), str(settings["framing"]))


def fit_basis(
    faces: FaceSet,
    components: int = COMPONENTS,
    sigma_64: float = SIGMA_64,
    framing: str = "tight",
    n_faces: int = FIT_FACES,
    seed: int = 0,
    batch: int = 500,
) -> FaceBasis:
    """The leading principal components of the skin's detail band of `n_faces` of `faces` (64 px) drawn at
    random by `seed` (all of them where there are fewer): the eigenvectors of their Gram matrix, taken back
    to pixels and normalised. Uncentred: the mean detail (the eyes, the mouth, the folds every face has) is
    the first of them."""
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(len(faces), min(n_faces, len(faces)), replace=False))
    skin = face_skin_mask(64, framing)
    rows = [
        (highpass(faces.batch(index[start : start + batch]), sigma_64) * skin).flatten(1).double()
        for start in range(0, len(index), batch)
    ]
    bands = torch.cat(rows)
    values, vectors = torch.linalg.eigh(bands @ bands.T)
    order = values.argsort(descending=True)[: min(components, len(index))]
    leading = vectors[:, order].T @ bands
    leading = leading / leading.norm(dim=1, keepdim=True).clamp(min=1e-12)
    return FaceBasis(leading.float().view(-1, 3, 64, 64).contiguous(), sigma_64, framing)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, required=True, help="the weights folder to write it into")
    parser.add_argument("--data", type=Path, default=Path("data/faces-tight"))
    parser.add_argument("--components", type=int, default=COMPONENTS)
    parser.add_argument("--sigma-64", type=float, default=SIGMA_64)
    parser.add_argument("--faces", type=int, default=FIT_FACES, help="training faces the components are fitted on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    from model.data import load_faces

    path = args.weights / "editor.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    framing = config.get("model", {}).get("framing", "loose")
    faces = load_faces(args.data, 64, "train")
    basis = fit_basis(faces, args.components, args.sigma_64, framing, args.faces, args.seed)
    # half precision: the projection needs no more (it halves the file), and the editor uses what it loads
    basis.components = basis.components.half().float()
    save_file({"components": basis.components.half()}, str(args.weights / BASIS_FILE))
    used = min(args.faces, len(faces))
    config[BASIS_KEY] = basis.settings(used, args.seed)
    path.write_text(json.dumps(config, indent=2) + "\n")
    print(
        f"fitted {basis.components.shape[0]} components of the {framing} skin's detail band below "
        f"{args.sigma_64:g} px on {used} of {len(faces)} train faces; wrote {BASIS_FILE} and {BASIS_KEY} "
        f"into {args.weights}"
    )


if __name__ == "__main__":
    main()
