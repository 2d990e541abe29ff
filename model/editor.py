"""AgeEditor: the one object that the service, the CLI, the benchmarks and the tests hold.

It owns the flow, the age trajectory and the face aligner, and runs the whole pipeline:
detect -> align -> encode -> read the current age -> move along the age trajectory -> decode ->
apply the change to the larger work crop -> paste back into the photo.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from model.age import AgeReading, AgeTrajectory, load_trajectory
from model.align import AlignedFace, DetectedFace, FaceAligner, crop_grid, paste_back
from model.checkpoint import load_flow

EDITOR_CONFIG = "editor.json"


class EditError(ValueError):
    """A photo that cannot be edited, with a message meant for the person who sent it."""


class NoFaceError(EditError):
    pass


class FaceTooSmallError(EditError):
    pass


@dataclass
class FaceEdit:
    """One aligned face before and after an edit, at the flow's resolution."""

    before: torch.Tensor  # 3 x S x S in [0, 1]
    after: torch.Tensor  # 3 x S x S in [0, 1]
    age_before: float
    age_after: float

    @property
    def change(self) -> torch.Tensor:
        return self.after - self.before

    @property
    def shift(self) -> float:
        return self.age_after - self.age_before


@dataclass
class FaceResult:
    box: list[float]
    landmarks: list[list[float]]
    score: float
    age_before: float
    age_after: float
    aligned_before: torch.Tensor
    aligned_after: torch.Tensor

    @property
    def shift(self) -> float:
        return self.age_after - self.age_before


@dataclass
class PhotoResult:
    image: np.ndarray  # H x W x 3 uint8, the photo with every edited face pasted back
    faces: list[FaceResult]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage


class _Stopwatch:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
        self.last = now


def skin_region(side: int) -> torch.Tensor:
    """Cheeks and nose of an aligned crop (the canonical framing of model.align): side x side, 0 or 1."""
    ys, xs = crop_grid(side)
    return ((((xs - 0.5) / 0.17) ** 2 + ((ys - 0.6) / 0.1) ** 2) <= 1.0).float()


def face_skin_mask(side: int) -> torch.Tensor:
    """Where the face's skin is in an aligned crop, 1 over the face and feathered to 0 at the hairline, the
    ears and below the chin: side x side."""
    ys, xs = crop_grid(side)
    radius = (((xs - 0.5) / 0.2) ** 2 + ((ys - 0.6) / 0.25) ** 2).sqrt()
    t = ((radius - 0.8) / 0.6).clamp(0, 1)
    return 1 - t * t * (3 - 2 * t)


LUMA = (0.299, 0.587, 0.114)


def no_added_tint(before: torch.Tensor, after: torch.Tensor, max_gain: float = 1.1) -> torch.Tensor:
    """`after` with its colour, per pixel, made a scaling (0 to `max_gain`) of the colour `before` had: the
    brightness change stays, hair can grey, but the edit adds no tint of its own (a flow moved far from
    its data tends to cast faces blue or purple)."""
    weights = torch.tensor(LUMA, device=before.device).view(1, 3, 1, 1)
    luma_before = (before * weights).sum(1, keepdim=True)
    luma_after = (after * weights).sum(1, keepdim=True)
    chroma_before, chroma_after = before - luma_before, after - luma_after
    scale = ((chroma_after * chroma_before).sum(1, keepdim=True)
             / ((chroma_before * chroma_before).sum(1, keepdim=True) + 1e-8)).clamp(0, max_gain)
    return luma_after + scale * chroma_before


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of N x C x S x S images over 3 sigma each side, edges reflected."""
    return gaussian_blur(images, 2 * max(1, int(3 * sigma)) + 1, sigma)


def keep_skin_tone(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """`after` without the edit's broad colour and brightness change over the face's skin (what stays there:
    wrinkles, shadows, the shape of the face), and with the cheeks' average colour exactly as before; the
    hair may still grey and the background is not touched. In this data older faces are also darker and
    redder, and an age edit must not change skin tone."""
    side = before.shape[-1]
    mask = face_skin_mask(side).to(before.device)
    after = after - blur(after - before, side / 24) * mask
    return after - cheek_shift(before, after) * mask


def cheek_shift(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """How far the cheeks' average colour moved from `before` to `after`: N x 3 x 1 x 1."""
    region = skin_region(before.shape[-1]).to(before.device)
    return ((after - before) * region).sum((2, 3), keepdim=True) / region.sum()


def keep_cheek_colour(before: torch.Tensor, after: torch.Tensor, rounds: int = 4) -> torch.Tensor:
    """`after` (in [0, 1]) with the cheeks' average colour set back to `before`'s over the face's skin, in
    `rounds` that each clip to [0, 1] again: where an edit reaches the end of the pixel range (light skin in
    bright light), clipping alone would shift the cheeks' colour."""
    mask = face_skin_mask(before.shape[-1]).to(before.device)
    for _ in range(rounds):
        after = (after - cheek_shift(before, after) * mask).clamp(0, 1)
    return after


def within_gamut(before: torch.Tensor, after: torch.Tensor, max_outside: float = 0.1) -> torch.Tensor:
    """`after` with each face's change scaled down, in steps, until at most `max_outside` of its pixels
    leave [0, 1], so that no edit burns out into flat black or white."""
    change = after - before
    factors = torch.linspace(1.0, 0.1, 10, device=before.device)
    trial = before[None] + factors[:, None, None, None, None] * change[None]  # F x N x 3 x S x S
    outside = ((trial < 0) | (trial > 1)).float().flatten(2).mean(2)  # F x N
    first_fit = (outside <= max_outside).float().argmax(0)  # F - 1 (0.1) when none fits
    first_fit[~(outside <= max_outside).any(0)] = len(factors) - 1
    return before + factors[first_fit][:, None, None, None] * change


class AgeEditor:
    def __init__(self, trajectory: AgeTrajectory, settings: dict, aligner: FaceAligner | None = None,
                 work_size: int = 256) -> None:
        self.trajectory = trajectory
        self.flow = trajectory.flow
        self.settings = settings
        self.work_size = work_size
        self._aligner = aligner

    @classmethod
    def from_dir(cls, folder: str | Path = "weights", device: str | torch.device = "cpu",
                 aligner: FaceAligner | None = None) -> "AgeEditor":
        folder = Path(folder)
        flow = load_flow(folder, device)
        settings = json.loads((folder / EDITOR_CONFIG).read_text()) if (folder / EDITOR_CONFIG).exists() else {}
        return cls(load_trajectory(folder, flow, settings), settings, aligner)

    @property
    def aligner(self) -> FaceAligner:
        if self._aligner is None:
            self._aligner = FaceAligner(device=self.device)
        return self._aligner

    @property
    def device(self) -> torch.device:
        return next(self.flow.parameters()).device

    @property
    def resolution(self) -> int:
        return self.flow.config.resolution

    @property
    def age_range(self) -> tuple[float, float]:
        return self.trajectory.age_range

    def info(self) -> dict:
        return {"resolution": self.resolution, "age_range": list(self.age_range),
                "trajectory": self.trajectory.name, **self.settings.get("model", {})}

    # ---- aligned faces ----------------------------------------------------------------------------
    @torch.no_grad()
    def estimate_age(self, faces: torch.Tensor) -> np.ndarray:
        """Ages in years of N aligned faces (N x 3 x S x S in [0, 1]), read from their latents."""
        return self.trajectory.estimate(faces.to(self.device)).ages

    @torch.no_grad()
    def edit(self, faces: torch.Tensor, years=None, target_age=None, reading: AgeReading | None = None
             ) -> list[FaceEdit]:
        """Age N aligned faces by `years` (a number or one per face) or to `target_age` (likewise).
        `reading`: the faces' ages as `trajectory.estimate` read them, when already known."""
        if (years is None) == (target_age is None):
            raise ValueError("give exactly one of years and target_age")
        faces = faces.to(self.device)
        reading = reading if reading is not None else self.trajectory.estimate(faces)
        low, high = self.age_range
        if target_age is None:
            target = reading.ages + np.broadcast_to(np.asarray(years, np.float64), reading.ages.shape)
        else:
            target = np.broadcast_to(np.asarray(target_age, np.float64), reading.ages.shape).copy()
        target = np.clip(target, low, high)
        after = self.trajectory.move(faces, reading, target)
        if self.trajectory.keep_skin_tone:
            after = keep_skin_tone(faces, no_added_tint(faces, after))
        after = within_gamut(faces, after).clamp(0, 1)
        if self.trajectory.keep_skin_tone:
            after = keep_cheek_colour(faces, after)
        return [FaceEdit(before=f.cpu(), after=a.cpu(), age_before=float(b), age_after=float(t))
                for f, a, b, t in zip(faces, after, reading.ages, target)]

    @torch.no_grad()
    def bits_per_dim(self, faces: torch.Tensor) -> np.ndarray:
        return self.flow.bits_per_dim(faces.to(self.device)).cpu().numpy()

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 0.7, seed: int = 0) -> torch.Tensor:
        return self.flow.sample(n, temperature, seed).clamp(0, 1).cpu()

    # ---- photos ------------------------------------------------------------------------------------
    def find_faces(self, image: np.ndarray, faces: str = "all") -> list[DetectedFace]:
        """Faces to edit, largest first. Raises NoFaceError or FaceTooSmallError with a reason."""
        detected = self.aligner.detect(image)
        if not detected:
            raise NoFaceError("No face was found in the photo. Use a photo where a face is clearly visible.")
        usable = [f for f in detected if not self.aligner.is_too_small(f)]
        if not usable:
            raise FaceTooSmallError(
                f"The face is too small ({detected[0].size:.0f} px; at least {self.aligner.min_face_size} px "
                "are needed). Use a closer or larger photo.")
        return usable[:1] if faces == "largest" else usable

    def align(self, image: np.ndarray, faces: list[DetectedFace]) -> list[AlignedFace]:
        return [self.aligner.align(image, f, (self.resolution, self.work_size)) for f in faces]

    def work_change(self, edit: FaceEdit) -> torch.Tensor:
        """The edit's change, upsampled to the work crop and smoothed so that no 64 px grain shows."""
        change = edit.change[None]
        change = F.avg_pool2d(F.pad(change, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        return F.interpolate(change, size=self.work_size, mode="bicubic", align_corners=False)[0]

    @torch.no_grad()
    def age_photo(self, image: np.ndarray, years=None, target_age=None, faces: str = "all") -> PhotoResult:
        """The photo with every chosen face aged; everything outside the faces stays as it was."""
        return self.age_photo_series(image, [target_age] if target_age is not None else None,
                                     years=years, faces=faces)[0]

    @torch.no_grad()
    def age_photo_series(self, image: np.ndarray, target_ages=None, years=None,
                         faces: str = "all") -> list[PhotoResult]:
        """One result per target age (or one for `years`), sharing detection, alignment and encoding."""
        timings: dict[str, float] = {}
        watch = _Stopwatch(timings)
        detected = self.find_faces(image, faces)
        watch.lap("detect")
        aligned = self.align(image, detected)
        watch.lap("align")
        crops = torch.stack([a.crops[self.resolution] for a in aligned])
        steps = [dict(years=years)] if target_ages is None else [dict(target_age=t) for t in target_ages]
        reading = self.trajectory.estimate(crops.to(self.device))
        results = []
        for step in steps:
            edits = self.edit(crops, reading=reading, **step)
            watch.lap("edit")
            out = image
            for a, e in zip(aligned, edits):
                out = paste_back(out, a, self.work_change(e))
            watch.lap("paste_back")
            face_results = [
                FaceResult(box=[float(v) for v in a.face.box], landmarks=a.face.landmarks.tolist(),
                           score=a.face.score, age_before=e.age_before, age_after=e.age_after,
                           aligned_before=e.before, aligned_after=e.after)
                for a, e in zip(aligned, edits)
            ]
            results.append(PhotoResult(image=out, faces=face_results, timings=dict(timings)))
        return results
