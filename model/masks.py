"""Regions of an aligned crop, each drawn once in the loose framing's coordinates (model.align.face_grid) so
that it lands on the same features in every framing. The paste-back mask, model.align.face_mask, stays
beside paste_back, which uses it."""

from __future__ import annotations

import torch

from model.align import face_grid


def skin_region(side: int, framing: str = "loose") -> torch.Tensor:
    """Cheeks and nose of an aligned crop of `framing` (model.align.FRAMINGS): side x side, 0 or 1."""
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
