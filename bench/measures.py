"""What bench.edit_quality measures of an edit, on uint8 crops (N x S x S x 3) or the flow's faces: identity
by dlib's face descriptors, skin tone as CIELab of the cheeks, patches, fine-detail energy and stability."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import dlib
import numpy as np
import torch
from PIL import Image

from bench.judges import to_tensor
from model.colour import blur
from model.data import FaceSet
from model.flow.detail import haar_split
from model.framing import to_loose_matrix
from model.masks import central_face, face_mask

# "patchy" (the flow issue's definition): the share of the central face where the edit's lightness change,
# after a 2 px blur, departs from its own median there by more than 12 L*; a face is patchy beyond 0.05
PATCH_LIGHTNESS, PATCH_SHARE, PATCH_BLUR = 12.0, 0.05, 2.0
DLIB_SIDE = 256
MATCH_THRESHOLD = 0.6  # dlib's standard threshold for "same person"
# the median box of dlib's own HOG face detector on aligned crops, as fractions of the crop
DLIB_FACE_BOX = (0.25, 0.30, 0.74, 0.82)
# the cheeks, level with the nose tip: below the eyes' shadows, beside the nose, above any moustache
SKIN_PATCHES = ((0.33, 0.55, 0.44, 0.66), (0.56, 0.55, 0.67, 0.66))


def box_in(box: tuple[float, float, float, float], framing: str) -> tuple[float, float, float, float]:
    """A box (x0, y0, x1, y1) drawn in the loose framing's unit crop, in the unit crop of `framing`."""
    m = np.linalg.inv(to_loose_matrix(framing))
    (x0, y0), (x1, y1) = ((m[:2, :2] @ np.array(p) + m[:2, 2]) for p in (box[:2], box[2:]))
    return float(x0), float(y0), float(x1), float(y1)


class FaceDescriptors:
    """dlib's 128-d face-recognition descriptors of aligned crops of `framing`."""

    def __init__(self, framing: str = "loose") -> None:
        # located without importing the package, whose __init__ needs pkg_resources (gone from setuptools)
        models = Path(importlib.util.find_spec("face_recognition_models").submodule_search_locations[0]) / "models"
        self.landmarks = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self.network = dlib.face_recognition_model_v1(str(models / "dlib_face_recognition_resnet_model_v1.dat"))
        self.box = dlib.rectangle(*(int(round(v * DLIB_SIDE)) for v in box_in(DLIB_FACE_BOX, framing)))

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        out = []
        for crop in crops:
            image = np.asarray(Image.fromarray(crop).resize((DLIB_SIDE, DLIB_SIDE), Image.BICUBIC))
            shape = self.landmarks(image, self.box)
            out.append(np.asarray(self.network.compute_face_descriptor(image, shape)))
        return np.stack(out)


def identity(a: np.ndarray, b: np.ndarray) -> dict:
    distance = np.linalg.norm(a - b, axis=1)
    return {
        "pairs": len(distance),
        "distance": float(distance.mean()),
        "match_rate": float((distance < MATCH_THRESHOLD).mean()),
    }


def grain(changes: torch.Tensor, framing: str = "loose") -> float:
    """Mean absolute high-frequency part of N x 3 x S x S changes (of crops of `framing`) over the face mask
    (the change less its Gaussian blur of 1 px): how much grid and blotch an edit adds."""
    mask = face_mask(changes.shape[-1], framing)
    detail = (changes - blur(changes, 1.0)).abs().mean(1)
    return float(((detail * mask).sum((1, 2)) / mask.sum()).mean())


def patch_shares(before: np.ndarray, after: np.ndarray, framing: str = "loose") -> np.ndarray:
    """Per face (N x S x S x 3 uint8 each), the share of the central face where the lightness change,
    blurred by 2 px, departs from its median over the central face by more than 12 L*."""
    change = cielab(after.astype(np.float64) / 255.0)[..., 0] - cielab(before.astype(np.float64) / 255.0)[..., 0]
    smooth = blur(torch.from_numpy(change).float()[:, None], PATCH_BLUR)[:, 0].numpy()
    region = central_face(before.shape[1], framing).numpy()
    inside = smooth[:, region]
    return (np.abs(inside - np.median(inside, 1, keepdims=True)) > PATCH_LIGHTNESS).mean(1)


def fine_detail_energy(crops: np.ndarray, framing: str = "loose") -> np.ndarray:
    """Per face (N x S x S x 3 uint8), the mean square of the finest Haar detail bands (what a 2x2 average
    loses) over the central face."""
    detail = haar_split(to_tensor(crops))[1]
    region = central_face(detail.shape[-1], framing)
    return detail.pow(2).mean(1)[:, region].mean(1).double().numpy()


def fine_detail_ratio(before: np.ndarray, after: np.ndarray, framing: str = "loose") -> np.ndarray:
    """Per face, the fine-detail energy of the central face after an edit over before."""
    return fine_detail_energy(after, framing) / np.maximum(fine_detail_energy(before, framing), 1e-12)


def real_fine_detail(crops: FaceSet, framing: str) -> dict:
    """The fine-detail energy of real held-out 55-75 year-olds over 18-35 year-olds (medians), from the
    sources whose crops are not upsampled."""
    sharp = np.array([not s.endswith("-64") for s in crops.sources]) if crops.sources else np.ones(len(crops), bool)
    energy = fine_detail_energy(crops.images[np.flatnonzero(sharp)], framing)
    ages = crops.ages[sharp]
    old, young = energy[(ages >= 55) & (ages <= 75)], energy[(ages >= 18) & (ages <= 35)]
    return {"old_faces": len(old), "young_faces": len(young), "ratio": float(np.median(old) / np.median(young))}


def different_people(genders: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) of different faces of the same gender: each face once as i, partners shuffled."""
    rng = np.random.default_rng(seed)
    firsts, seconds = [], []
    for gender in sorted(set(genders)):
        members = rng.permutation([i for i, g in enumerate(genders) if g == gender])
        if len(members) > 1:
            firsts.append(members)
            seconds.append(np.roll(members, 1))
    return np.concatenate(firsts), np.concatenate(seconds)


# not model.colour.cielab: its matrix, rounded to 4 digits, moves a* and b* by up to 0.02 and L* by 0.008
SRGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
D65_WHITE = np.array([0.95047, 1.0, 1.08883])


def cielab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] (... x 3) -> CIELab under D65 (... x 3: L*, a*, b*)."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ SRGB_TO_XYZ.T / D65_WHITE
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def skin_colour(crops: np.ndarray, framing: str = "loose") -> np.ndarray:
    """Mean CIELab of the cheek patches of N x S x S x 3 uint8 crops of `framing`: N x 3."""
    side = crops.shape[1]
    pixels = []
    for patch in SKIN_PATCHES:
        x0, y0, x1, y1 = (int(round(v * side)) for v in box_in(patch, framing))
        pixels.append(crops[:, y0:y1, x0:x1].reshape(len(crops), -1, 3))
    return cielab(np.concatenate(pixels, 1).astype(np.float64) / 255.0).mean(1)


def broken(images: torch.Tensor) -> dict:
    """NaN, black (mean < 0.05) and saturated (> 30 % of values at 0 or 1) faces among N x 3 x S x S."""
    nan = ~torch.isfinite(images).flatten(1).all(1)
    clean = torch.nan_to_num(images, 0.5)
    black = clean.flatten(1).mean(1) < 0.05
    clipped = ((clean <= 0.5 / 255) | (clean >= 1 - 0.5 / 255)).flatten(1).float().mean(1)
    return {
        "faces": len(images),
        "nan": int(nan.sum()),
        "black": int((black & ~nan).sum()),
        "saturated": int(((clipped > 0.3) & ~nan & ~black).sum()),
    }
