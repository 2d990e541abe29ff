"""MTCNN face detection with facenet-pytorch's networks and weights, batched.

The same three stages, thresholds and NMS as facenet-pytorch's `detect_face`, and the same results: its
area resampling of integer pixels is exact from their integral image, so every pyramid level and every
candidate box is read from one integral image in a few gathers per output pixel. `detect_face` resamples the
whole photo once per pyramid level and each candidate box in a Python loop, one tiny resize at a time."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import (
    batched_nms_numpy,
    bbreg,
    fixed_batch_process,
    generateBoundingBox,
    rerec,
)
from torchvision.ops import batched_nms, nms

from model.side_threads import beside

if TYPE_CHECKING:
    from facenet_pytorch import MTCNN

Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes N x 4, scores N, landmarks N x 5 x 2


class AreaSampler:
    """Area resampling (`interpolate(mode="area")`, i.e. adaptive average pooling) of one H x W x 3 uint8
    image and of axis-aligned regions of it, read from its integral image. Results are N x 3 x rows x
    columns floats, channels-last in memory like the networks."""

    def __init__(self, image: np.ndarray) -> None:
        height, width = image.shape[:2]
        exact = np.int32 if height * width * 255 < 2**31 else np.int64  # the narrower, the faster
        self.integral = np.zeros((height + 1, width + 1, 3), exact)
        sums = self.integral[1:, 1:]
        np.cumsum(image, 1, dtype=exact, out=sums)
        np.cumsum(sums, 0, out=sums)

    def resized(self, rows: int, columns: int) -> torch.Tensor:
        """The whole image at rows x columns (1 x 3 x rows x columns), one axis at a time."""
        height, width = self.integral.shape[0] - 1, self.integral.shape[1] - 1
        rows_lo, rows_hi = _windows(np.zeros(1, np.int64), np.array([height]), rows)
        cols_lo, cols_hi = _windows(np.zeros(1, np.int64), np.array([width]), columns)
        sums = np.take(self.integral, rows_hi[0], 0) - np.take(self.integral, rows_lo[0], 0)
        sums = np.take(sums, cols_hi[0], 1) - np.take(sums, cols_lo[0], 1)
        return _means(sums[None], rows_hi - rows_lo, cols_hi - cols_lo)

    def regions(
        self, top: np.ndarray, left: np.ndarray, height: np.ndarray, width: np.ndarray, side: int
    ) -> torch.Tensor:
        """K regions (first row and column, rows and columns: int arrays of K) at side x side each."""
        rows_lo, rows_hi = _windows(top, height, side)
        cols_lo, cols_hi = _windows(left, width, side)
        stride = self.integral.shape[1]
        r0, r1 = rows_lo[:, :, None] * stride, rows_hi[:, :, None] * stride
        c0, c1 = cols_lo[:, None, :], cols_hi[:, None, :]
        flat = self.integral.reshape(-1, 3)
        sums = np.take(flat, r1 + c1, 0) - np.take(flat, r0 + c1, 0) - np.take(flat, r1 + c0, 0)
        sums += np.take(flat, r0 + c0, 0)
        return _means(sums, rows_hi - rows_lo, cols_hi - cols_lo)


def _windows(start: np.ndarray, length: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive pooling's windows of `size` outputs over `length` inputs from `start`: K x size first and
    one-past-last indices (floor(i * length / size), ceil((i + 1) * length / size))."""
    i = np.arange(size)
    lo = (i * length[:, None]) // size
    hi = ((i + 1) * length[:, None] + size - 1) // size
    return start[:, None] + lo, start[:, None] + hi


def _means(sums: np.ndarray, rows: np.ndarray, columns: np.ndarray) -> torch.Tensor:
    """K x R x C x 3 window sums over K x R window heights and K x C widths -> K x 3 x R x C means, divided
    as the pooling kernel divides, so that they are the same floats."""
    means = torch.from_numpy(sums).to(torch.float32)
    means /= torch.from_numpy(rows).to(torch.float32)[:, :, None, None]
    means /= torch.from_numpy(columns).to(torch.float32)[:, None, :, None]
    return means.permute(0, 3, 1, 2)


def _normalized(pixels: torch.Tensor) -> torch.Tensor:
    """The networks' input scale, in place, computed as `detect_face` computes it."""
    return pixels.sub_(127.5).mul_(0.0078125)


def _pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """The scales of `detect_face`'s image pyramid, computed the same way."""
    scale = 12.0 / min_face_size
    shortest = min(height, width) * scale
    scales = []
    while shortest >= 12:
        scales.append(scale)
        scale *= factor
        shortest *= factor
    return scales


def _halves(scales: list[float]) -> tuple[list[int], list[int]]:
    """The pyramid's levels in two groups of about equal pixels (each level's pixels go as its scale
    squared), largest first into whichever group holds fewer."""
    groups: tuple[list[int], list[int]] = ([], [])
    load = [0.0, 0.0]
    for level, scale in enumerate(scales):
        lighter = int(load[1] < load[0])
        groups[lighter].append(level)
        load[lighter] += scale * scale
    return groups


def _crops(
    sampler: AreaSampler, boxes: torch.Tensor, height: int, width: int, side: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`detect_face`'s crops of boxes (clipped to the image, then squeezed to side x side) and which boxes
    had any pixels to crop."""
    corners = boxes[:, :4].trunc().long().cpu().numpy()
    left = np.maximum(corners[:, 0], 1) - 1
    top = np.maximum(corners[:, 1], 1) - 1
    cols = np.minimum(corners[:, 2], width) - left
    rows = np.minimum(corners[:, 3], height) - top
    valid = (rows > 0) & (cols > 0)
    crops = sampler.regions(top[valid], left[valid], rows[valid], cols[valid], side)
    return _normalized(crops).to(boxes.device), torch.from_numpy(valid).to(boxes.device)


def mtcnn_detect(mtcnn: MTCNN, image: np.ndarray, min_face_size: float) -> Detections:
    """Faces in an H x W x 3 uint8 image, as `mtcnn.detect(image, landmarks=True)` with
    `mtcnn.min_face_size = min_face_size` finds them: boxes (x1, y1, x2, y2), scores and five landmarks, in
    the image's pixels, largest box first."""
    device = next(mtcnn.pnet.parameters()).device
    height, width = image.shape[:2]
    thresholds = mtcnn.thresholds
    sampler = AreaSampler(image)

    # first stage: PNet over the pyramid, NMS within each level, then across levels; on a CPU, half of the
    # pyramid's pixels on a side thread (the levels' results are gathered in their order: the same boxes)
    scales = _pyramid_scales(height, width, min_face_size, mtcnn.factor)
    if not scales:
        return _nothing()

    def run(chosen: list[int]) -> list[torch.Tensor]:
        found = []
        for level in chosen:
            scale = scales[level]
            level_pixels = sampler.resized(int(height * scale + 1), int(width * scale + 1))
            reg, probs = mtcnn.pnet(_normalized(level_pixels).to(device))
            found.append(generateBoundingBox(reg, probs[:, 1], scale, thresholds[0])[0])
        return found

    here, there = _halves(scales) if device.type == "cpu" else (list(range(len(scales))), [])
    elsewhere = beside(run, there) if there else None
    candidates = dict(zip(here, run(here)))
    if elsewhere is not None:
        candidates.update(zip(there, elsewhere.result()))
    found_by_level = [candidates[level] for level in range(len(scales))]
    levels = [torch.full((len(found),), level, device=device) for level, found in enumerate(found_by_level)]
    boxes, level_of = torch.cat(found_by_level), torch.cat(levels)
    boxes = boxes[batched_nms(boxes[:, :4], boxes[:, 4], level_of, 0.5)]
    boxes = boxes[nms(boxes[:, :4], boxes[:, 4], 0.7)]
    if len(boxes) == 0:
        return _nothing()
    side_w, side_h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    regressed = boxes[:, :4] + boxes[:, 5:9] * torch.stack([side_w, side_h, side_w, side_h], 1)
    boxes = rerec(torch.cat([regressed, boxes[:, 4:5]], 1))

    # second stage: RNet on 24 x 24 crops
    crops, valid = _crops(sampler, boxes, height, width, 24)
    boxes = boxes[valid]
    if len(boxes) == 0:
        return _nothing()
    offsets, probs = fixed_batch_process(crops, mtcnn.rnet)
    keep = probs[:, 1] > thresholds[1]
    boxes = torch.cat([boxes[keep, :4], probs[keep, 1:2]], 1)
    offsets = offsets[keep]
    pick = nms(boxes[:, :4], boxes[:, 4], 0.7)
    boxes = rerec(bbreg(boxes[pick], offsets[pick]))

    # third stage: ONet on 48 x 48 crops, with the landmarks
    crops, valid = _crops(sampler, boxes, height, width, 48)
    boxes = boxes[valid]
    if len(boxes) == 0:
        return _nothing()
    offsets, points, probs = fixed_batch_process(crops, mtcnn.onet)
    keep = probs[:, 1] > thresholds[2]
    boxes = torch.cat([boxes[keep, :4], probs[keep, 1:2]], 1)
    offsets, points = offsets[keep], points[keep]
    box_w = (boxes[:, 2] - boxes[:, 0] + 1)[:, None]
    box_h = (boxes[:, 3] - boxes[:, 1] + 1)[:, None]
    landmarks = torch.stack([box_w * points[:, :5] + boxes[:, :1] - 1, box_h * points[:, 5:] + boxes[:, 1:2] - 1], 2)
    boxes = bbreg(boxes, offsets)
    pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], torch.zeros(len(boxes), device=device), 0.7, "Min")
    found = boxes[pick].cpu().numpy()
    landmarks = landmarks[pick].cpu().numpy()
    order = np.argsort((found[:, 2] - found[:, 0]) * (found[:, 3] - found[:, 1]))[::-1]  # as MTCNN.detect
    return found[order, :4], found[order, 4], landmarks[order]


def _nothing() -> Detections:
    return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 5, 2), np.float32)
