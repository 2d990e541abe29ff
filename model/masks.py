"""Regions of an aligned crop: the skin and face regions, each drawn once in the loose framing's coordinates
(model.framing.face_grid) so that it lands on the same features in every framing, and the paste-back mask of
each framing (face_mask, used by model.align.paste_back), drawn in the crop's own coordinates."""

from __future__ import annotations

import torch

from model.framing import crop_grid, face_grid

# the paste-back ellipse of each framing, in the crop's own coordinates: x and y radii, centre y, feather.
# The loose crop holds the face and hair, so the ellipse takes in the hair; the tight crop is the face from
# brows to chin, so the ellipse fills the crop and fades out at its edges.
PASTE_ELLIPSES = {"loose": (0.40, 0.46, 0.50, 0.25), "tight": (0.48, 0.48, 0.50, 0.30)}


def face_mask(side: int, framing: str = "loose") -> torch.Tensor:
    """The paste-back mask of a crop of `side` pixels: a soft ellipse over the face, 1 inside, 0 at the
    crop's edges, so that an edit fades into the untouched photo."""
    ys, xs = crop_grid(side)
    rx, ry, cy, feather = PASTE_ELLIPSES[framing]
    r = torch.sqrt(((xs - 0.5) / rx) ** 2 + ((ys - cy) / ry) ** 2)
    t = ((1.0 - r) / feather).clamp(0, 1)
    return t * t * (3 - 2 * t)


def skin_region(side: int, framing: str = "loose") -> torch.Tensor:
    """Cheeks and nose of an aligned crop of `framing` (model.framing.FRAMINGS): side x side, 0 or 1."""
    ys, xs = face_grid(side, framing)
    return ((((xs - 0.5) / 0.17) ** 2 + ((ys - 0.6) / 0.1) ** 2) <= 1.0).float()


def central_face(side: int, framing: str = "loose") -> torch.Tensor:
    """Cheeks, eyes, nose and mouth of an aligned crop of `framing`: side x side booleans."""
    ys, xs = face_grid(side, framing)
    return (((xs - 0.5) / 0.2) ** 2 + ((ys - 0.6) / 0.2) ** 2) <= 1.0


def face_skin_mask(side: int, framing: str = "loose") -> torch.Tensor:
    """Where the face's skin is in an aligned crop of `framing`, 1 over the face and feathered to 0 at the
    hairline, the ears and below the chin: side x side."""
    ys, xs = face_grid(side, framing)
    radius = (((xs - 0.5) / 0.2) ** 2 + ((ys - 0.6) / 0.25) ** 2).sqrt()
    t = ((radius - 0.8) / 0.6).clamp(0, 1)
    return 1 - t * t * (3 - 2 * t)
