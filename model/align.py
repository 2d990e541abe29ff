"""Face detection, alignment to a canonical template (model.framing), and paste-back into the original photo.

Coordinates are (x, y) in pixels. An alignment is a 2x3 similarity matrix that maps photo pixels to
pixels of a unit crop (side 1.0); scaling it gives the matrix for a crop of any side, so the flow crop
and the larger work crop share one framing.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from model.detect import mtcnn_detect
from model.framing import FRAMINGS, mapped_grid, similarity_transform, to_loose_matrix
from model.masks import face_mask


@dataclass
class DetectedFace:
    box: np.ndarray  # x1, y1, x2, y2 in photo pixels
    landmarks: np.ndarray  # 5 x 2 in photo pixels
    score: float

    @property
    def size(self) -> float:
        """Side of the face in photo pixels: the larger side of the detector's box."""
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


@dataclass
class AlignedFace:
    face: DetectedFace
    matrix: np.ndarray  # 2x3, photo pixels -> unit crop
    crops: dict[int, torch.Tensor] = field(default_factory=dict)  # side -> 3 x side x side, floats in [0, 1]
    framing: str = "loose"  # the landmark template of FRAMINGS the matrix maps the face onto

    def cut(self, image: np.ndarray, side: int) -> torch.Tensor:
        """The face's crop of `side` pixels from `image`, the photo it was aligned in: cut once, then kept."""
        if side not in self.crops:
            self.crops[side] = warp_to_crop(image, self.matrix, side)
        return self.crops[side]


def stack_crops(aligned: list[AlignedFace], side: int) -> torch.Tensor:
    """The faces' crops of `side` pixels as one batch: N x 3 x side x side."""
    return torch.stack([a.crops[side] for a in aligned])


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    full = np.vstack([matrix, [0.0, 0.0, 1.0]])
    return np.linalg.inv(full)[:2]


def scaled(matrix: np.ndarray, side: float) -> np.ndarray:
    """The unit-crop matrix for a crop of `side` pixels (pixel centres at integer coordinates)."""
    out = matrix * side
    out[:, 2] -= 0.5
    return out


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 1 x 3 x H x W float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


def _grid_for(matrix_dst_to_src: np.ndarray, out_h: int, out_w: int, src_h: int, src_w: int) -> torch.Tensor:
    """Sampling grid (normalized, align_corners=False) of source positions for each destination pixel."""
    ys, xs = torch.meshgrid(
        torch.arange(out_h, dtype=torch.float64), torch.arange(out_w, dtype=torch.float64), indexing="ij"
    )
    m = torch.from_numpy(matrix_dst_to_src)
    sx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    sy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    gx = (sx + 0.5) / src_w * 2 - 1
    gy = (sy + 0.5) / src_h * 2 - 1
    return torch.stack([gx, gy], -1).unsqueeze(0).float()


def crop_footprint(inverse: np.ndarray, side: int, height: int, width: int, margin: int = 0):
    """The photo's pixel box (x0, y0, x1, y1), clipped to the photo, under a `side` x `side` crop whose
    crop-to-photo matrix is `inverse`, widened by `margin` pixels."""
    corners = np.array([[0, 0, 1], [side, 0, 1], [0, side, 1], [side, side, 1]], np.float64)
    src = corners @ inverse.T
    x0 = int(max(0, np.floor(src[:, 0].min()) - margin))
    y0 = int(max(0, np.floor(src[:, 1].min()) - margin))
    x1 = int(min(width, np.ceil(src[:, 0].max()) + margin + 1))
    y1 = int(min(height, np.ceil(src[:, 1].max()) + margin + 1))
    return x0, y0, x1, y1


def warp_to_crop(image: np.ndarray, matrix: np.ndarray, side: int, padding: str = "reflection") -> torch.Tensor:
    """Crop `side` x `side` pixels of the aligned face from an H x W x 3 uint8 photo.

    Only the region under the crop is converted to floats, and it is first shrunk with an anti-aliasing
    filter when the crop is much smaller than the face, so large photos stay cheap and free of aliasing.
    Outside the photo the crop reflects the photo's border (`padding="zeros"`: it is black).
    """
    pixel_matrix = scaled(matrix, side)
    inverse = invert_affine(pixel_matrix)
    h, w = image.shape[:2]
    x0, y0, x1, y1 = crop_footprint(inverse, side, h, w, margin=2)
    if x1 - x0 < 2 or y1 - y0 < 2:  # the crop lies wholly outside the photo: use the whole photo
        x0, y0, x1, y1 = 0, 0, w, h
    region = image_to_tensor(image[y0:y1, x0:x1].copy())
    inverse = inverse.copy()
    inverse[:, 2] -= [x0, y0]
    scale = float(np.sqrt(abs(np.linalg.det(pixel_matrix[:, :2]))))  # crop pixels per photo pixel
    if scale < 0.5:
        factor = 2.0 * scale
        new_h = max(2, int(round(region.shape[2] * factor)))
        new_w = max(2, int(round(region.shape[3] * factor)))
        fy, fx = new_h / region.shape[2], new_w / region.shape[3]
        region = F.interpolate(region, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        to_small = np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5]])
        inverse = to_small @ np.vstack([inverse, [0, 0, 1]])
    grid = _grid_for(inverse, side, side, region.shape[2], region.shape[3])
    crop = F.grid_sample(region, grid, mode="bilinear", padding_mode=padding, align_corners=False)
    return crop[0].clamp_(0, 1)


def crop_coverage(valid: np.ndarray, matrix: np.ndarray, side: int) -> float:
    """The least share of any crop pixel that comes from valid photo pixels (`valid`: H x W bool), so
    1.0 means the crop holds no reflected, padded or invented pixel."""
    mask = np.repeat(valid[:, :, None].astype(np.uint8) * 255, 3, axis=2)
    return float(warp_to_crop(mask, matrix, side, padding="zeros")[0].min())


def reframe(images: torch.Tensor, source: str, target: str, side: int) -> torch.Tensor:
    """N x C x S x S crops of framing `source` resampled into crops of framing `target`, `side` pixels each
    (bilinear; zero where the source crop does not reach)."""
    # target unit crop -> source unit crop
    sy, sx = mapped_grid(side, np.linalg.inv(to_loose_matrix(source)) @ to_loose_matrix(target))
    grid = torch.stack([sx, sy], -1)[None].expand(len(images), -1, -1, -1) * 2 - 1
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def face_scale(framing: str = "loose") -> float:
    """How many times larger the face is in a crop of `framing` than in a loose crop of the same side."""
    return float(1.0 / np.sqrt(abs(np.linalg.det(to_loose_matrix(framing)[:2, :2]))))


def paste_back(image: np.ndarray, aligned: AlignedFace, change: torch.Tensor) -> np.ndarray:
    """Add `change` (3 x S x S, in [−1, 1] units of the crop) to the face in the photo under a feathered mask.

    Only the pixels under the face's mask are touched; everywhere else the photo is returned unchanged,
    so a zero change returns the photo exactly.
    """
    side = change.shape[-1]
    pixel_matrix = scaled(aligned.matrix, side)
    h, w = image.shape[:2]
    x0, y0, x1, y1 = crop_footprint(invert_affine(pixel_matrix), side, h, w)
    if x1 <= x0 or y1 <= y0:
        return image
    to_crop = pixel_matrix.copy()
    to_crop[:, 2] += pixel_matrix[:, :2] @ np.array([x0, y0], np.float64)
    grid = _grid_for(to_crop, y1 - y0, x1 - x0, side, side)
    payload = torch.cat([change.float(), face_mask(side, aligned.framing)[None]], 0)[None]
    sampled = F.grid_sample(payload, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    delta = (sampled[:3] * sampled[3:4]).permute(1, 2, 0).numpy() * 255.0
    out = image.copy()
    region = out[y0:y1, x0:x1].astype(np.float32) + delta
    out[y0:y1, x0:x1] = np.clip(np.rint(region), 0, 255).astype(np.uint8)
    return out


# MTCNN's smallest face, in pixels of the image it runs on; faces from MIN_FACE_SIZE photo pixels are edited
DETECTOR_SMALLEST = 20.0
MIN_FACE_SIZE = 24


def downscaled(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """The photo shrunk to at most `max_side` pixels a side, and its scale (1.0: the photo itself).

    Bilinear with antialiasing, as PIL's `resize(..., BILINEAR)` (which it matches to within one grey level on
    a fraction of a percent of the values), by torch's uint8 kernel on the photo's own H x W x 3 memory: five
    times faster for a 1 MP selfie and twelve times for a 12 MP photo."""
    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, 1.0
    factor = max_side / max(h, w)
    size = (max(1, round(h * factor)), max(1, round(w * factor)))
    with warnings.catch_warnings():  # a decoded photo is often read-only: torch warns, and only reads it
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]  # channels-last, no copy
    with torch.inference_mode():
        small = F.interpolate(pixels, size=size, mode="bilinear", antialias=True, align_corners=False)
    return np.ascontiguousarray(small[0].permute(1, 2, 0).numpy()), factor


def box_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - w * h
    return float(w * h / union) if union > 0 else 0.0


class FaceAligner:
    """MTCNN detection (weights from the facenet-pytorch wheel) and similarity alignment.

    `detect_max_side`: photos larger than this are detected on a downscaled copy, and the boxes and
    landmarks are mapped back to full resolution; `second_pass_side`: the larger copy searched again when
    that first pass finds nothing, or finds faces near the detector's smallest size (smaller ones it cannot
    see on the shrunk copy). `min_face_size`: faces smaller than this many photo pixels are reported as too
    small. `framing`: the name of the landmark template in FRAMINGS.
    """

    def __init__(
        self,
        detect_max_side: int = 640,
        min_face_size: int = MIN_FACE_SIZE,
        min_score: float = 0.9,
        device: str | torch.device = "cpu",
        framing: str = "loose",
        second_pass_side: int = 1600,
    ) -> None:
        from facenet_pytorch import MTCNN

        if framing not in FRAMINGS:
            raise ValueError(f"unknown framing {framing!r}; known: {', '.join(FRAMINGS)}")
        self.framing = framing
        self.detect_max_side = detect_max_side
        self.second_pass_side = second_pass_side
        self.min_face_size = min_face_size
        self.min_score = min_score
        self.mtcnn = MTCNN(keep_all=True, min_face_size=DETECTOR_SMALLEST, device=device, post_process=False)
        for net in (self.mtcnn.pnet, self.mtcnn.rnet, self.mtcnn.onet):
            net.to(memory_format=torch.channels_last)  # same results, faster convolutions and pooling on CPUs

    def detect(self, image: np.ndarray, smallest: float = 20.0) -> list[DetectedFace]:
        """All faces in an H x W x 3 uint8 photo, largest first (including ones below `min_face_size`).

        `smallest`: the smallest face searched for, in photo pixels (never below 20 pixels of the image
        detection runs on); a larger value skips the finest levels of the detector's image pyramid.
        """
        faces, factor = self._detect_at(image, self.detect_max_side, smallest)
        near_the_limit = any(f.size * factor < 2 * DETECTOR_SMALLEST for f in faces)
        if factor < 1 and self.second_pass_side > self.detect_max_side and (not faces or near_the_limit):
            larger, _ = self._detect_at(image, self.second_pass_side, smallest)
            faces = larger + [f for f in faces if all(box_overlap(f.box, g.box) < 0.3 for g in larger)]
        faces.sort(key=lambda f: f.size, reverse=True)
        return faces

    def _detect_at(self, image: np.ndarray, max_side: int, smallest: float) -> tuple[list[DetectedFace], float]:
        """Faces found on a copy of the photo at most `max_side` pixels a side, and that copy's scale."""
        small, factor = downscaled(image, max_side)
        shortest = min(small.shape[:2])
        if shortest < 12:  # smaller than the detector's 12-pixel window
            return [], factor
        # a smallest face larger than the image would leave the pyramid empty: search the image's own size
        min_face_size = min(max(DETECTOR_SMALLEST, smallest * factor), shortest - 1.0)
        with torch.inference_mode():
            boxes, scores, points = mtcnn_detect(self.mtcnn, small, min_face_size)
        faces = [
            DetectedFace(box=b.astype(np.float64) / factor, landmarks=p.astype(np.float64) / factor, score=float(s))
            for b, s, p in zip(boxes, scores, points)
            if s >= self.min_score
        ]
        return faces, factor

    def is_too_small(self, face: DetectedFace) -> bool:
        return face.size < self.min_face_size

    @staticmethod
    def alignment(face: DetectedFace, framing: str = "loose") -> np.ndarray:
        return similarity_transform(face.landmarks, FRAMINGS[framing])

    def align(
        self, image: np.ndarray, face: DetectedFace, sides: tuple[int, ...] = (64, 256), framing: str | None = None
    ) -> AlignedFace:
        """The face's alignment onto `framing` (the aligner's own when None) and its crops at `sides`."""
        framing = framing or self.framing
        matrix = self.alignment(face, framing)
        aligned = AlignedFace(face=face, matrix=matrix, framing=framing)
        for side in sides:
            aligned.cut(image, side)
        return aligned
