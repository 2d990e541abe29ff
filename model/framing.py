"""The framings of an aligned crop: the landmark templates that alignment maps a face onto, and the maps
between the crops of different framings. Regions drawn once in the loose framing's coordinates (face_grid,
model.masks) land on the same features in every framing."""

from __future__ import annotations

import numpy as np
import torch

# Five landmarks (left eye, right eye, nose tip, left and right mouth corner) in a unit crop, per framing.
# "loose" (the first model's): forehead, hair and chin inside, the face about 35 of 64 pixels wide.
# "tight": brows to chin and cheek to cheek fill the crop, so that folds, eye bags and jowls get pixels.
# It is the widest framing that UTKFace's tight crops still cover with their own pixels (79 % of them; a
# framing that keeps the hairline is covered by none, see model.prepare); the forehead ends near the top.
FRAMINGS = {
    "loose": np.array(
        [[0.3865, 0.4600], [0.6135, 0.4600], [0.5000, 0.5900], [0.4080, 0.7200], [0.5950, 0.7200]], np.float64
    ),
    "tight": np.array(
        [[0.2755, 0.2910], [0.7245, 0.2910], [0.5000, 0.5480], [0.2935, 0.7355], [0.7065, 0.7355]], np.float64
    ),
}
CANONICAL_LANDMARKS = FRAMINGS["loose"]


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src points onto dst (Umeyama)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1.0
    rotation = u @ np.diag(d) @ vt
    scale = (s * d).sum() / src_c.var(0).sum()
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def crop_grid(side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres of a square crop as fractions of its side: (ys, xs), each side x side."""
    coords = (torch.arange(side, dtype=torch.float32) + 0.5) / side
    return torch.meshgrid(coords, coords, indexing="ij")


def face_grid(side: int, framing: str = "loose") -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres of a crop of `framing`, in the coordinates of the loose framing's unit crop: a region
    drawn once on the face in those coordinates lands on the same features in every framing."""
    return mapped_grid(side, to_loose_matrix(framing))


def mapped_grid(side: int, matrix: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centres of a square crop (as fractions of its side) mapped by a 3x3 affine `matrix` on (x, y):
    (ys, xs), each side x side."""
    ys, xs = crop_grid(side)
    m = torch.from_numpy(matrix).float()
    return m[1, 0] * xs + m[1, 1] * ys + m[1, 2], m[0, 0] * xs + m[0, 1] * ys + m[0, 2]


def to_loose_matrix(framing: str) -> np.ndarray:
    """The 3x3 map from unit-crop coordinates (x, y) of `framing` to those of the loose framing."""
    m = np.eye(3)
    if framing != "loose":
        m[:2] = similarity_transform(FRAMINGS[framing], FRAMINGS["loose"])
    return m
