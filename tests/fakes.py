"""FakeEditor: the editor as the service calls it, with the real face detector and no flow, so that the tests of
what the service does with the editor's answers (status codes, headers, limits, keys, privacy) run without
weights/. Its answers are deterministic and shaped like AgeEditor's: each face's age is read from its
brightness, an edit lightens (older) or darkens (younger) the face's box by one level a year, bits/dim come
from the face's contrast, and samples from the seed."""

from __future__ import annotations

import time

import numpy as np
import torch

from model.align import AlignedFace, DetectedFace, FaceAligner, stack_crops
from model.editor import EditLimits, FaceResult, PhotoResult, SkippedFace, result_canvas, usable_faces


class FakeEditor:
    resolution = 64
    work_size = 256
    age_range = (1.0, 90.0)
    device = torch.device("cpu")

    def __init__(self, aligner: FaceAligner) -> None:
        self.aligner = aligner

    def info(self) -> dict:
        return {"resolution": self.resolution, "age_range": list(self.age_range), "trajectory": "fake"}

    def estimate_age(self, faces: torch.Tensor) -> np.ndarray:
        """20 years for a black face to 60 for a white one."""
        return (20.0 + 40.0 * faces.mean(dim=(1, 2, 3))).double().numpy()

    def bits_per_dim(self, faces: torch.Tensor) -> np.ndarray:
        return (3.0 + faces.std(dim=(1, 2, 3))).double().numpy()

    def sample(self, n: int, temperature: float = 0.7, seed: int = 0) -> torch.Tensor:
        noise = torch.randn(n, 3, self.resolution, self.resolution, generator=torch.Generator().manual_seed(seed))
        return (0.5 + 0.2 * temperature * noise).clamp(0, 1)

    def align(self, image: np.ndarray, faces: list[DetectedFace]) -> list[AlignedFace]:
        return [self.aligner.align(image, f, (self.resolution,)) for f in faces]

    def find_faces(self, image: np.ndarray, faces: str = "all") -> list[DetectedFace]:
        usable = self._usable(self.aligner.detect(image))
        return usable[:1] if faces == "largest" else usable

    def _usable(self, detected: list[DetectedFace]) -> list[DetectedFace]:
        return usable_faces(self.aligner, detected)

    def age_photo(
        self,
        image: np.ndarray,
        years=None,
        target_age=None,
        faces: str = "all",
        limits: EditLimits | None = None,
        photo_pixels: int | None = None,
    ) -> PhotoResult:
        targets = None if target_age is None else [target_age]
        return self.age_photo_series(image, targets, years, faces, limits, photo_pixels)[0]

    def age_photo_series(
        self,
        image: np.ndarray,
        target_ages=None,
        years=None,
        faces: str = "all",
        limits: EditLimits | None = None,
        photo_pixels: int | None = None,
    ) -> list[PhotoResult]:
        """Faces beyond `limits.max_faces` or `faces="largest"` are skipped; the work budget is not modelled."""
        started = time.perf_counter()
        detected = self.aligner.detect(image)
        usable = self._usable(detected)
        edited = usable[: 1 if faces == "largest" else (limits or EditLimits()).max_faces]
        skipped = [SkippedFace(f, "too_small") for f in detected if self.aligner.is_too_small(f)] + [
            SkippedFace(f, "largest_only" if faces == "largest" else "face_limit") for f in usable[len(edited) :]
        ]
        aligned = self.align(image, edited)
        ages = self.estimate_age(stack_crops(aligned, self.resolution))
        canvas, _ = result_canvas(image, photo_pixels)
        detect_seconds = time.perf_counter() - started
        results = []
        for target in [None] if target_ages is None else target_ages:
            started = time.perf_counter()
            out = None if canvas is None else canvas.copy()
            face_results = []
            for face, age in zip(aligned, ages.tolist()):
                asked = age + years if target is None else target
                age_after = float(np.clip(asked, *self.age_range))
                shift = age_after - age
                if out is not None:
                    box = np.round(face.face.box * out.shape[1] / image.shape[1]).astype(int)
                    lighten(out[max(0, box[1]) : box[3], max(0, box[0]) : box[2]], shift)
                face_results.append(
                    FaceResult(
                        aligned=face,
                        age_before=age,
                        age_after=age_after,
                        aligned_after=(face.crops[self.resolution] + shift / 255).clamp(0, 1),
                        work_after=lighten(self._work_pixels(image, face), shift) if out is None else None,
                        age_target=age_after,
                        clamped=age_after != asked,
                    )
                )
            timings = {"detect": detect_seconds, "edit": time.perf_counter() - started}
            results.append(PhotoResult(image=out, faces=face_results, timings=timings, skipped=skipped))
        return results

    def _work_pixels(self, image: np.ndarray, face: AlignedFace) -> np.ndarray:
        """The face's work crop as work_size x work_size x 3 uint8."""
        return face.cut(image, self.work_size).mul(255).round().byte().permute(1, 2, 0).numpy()


def lighten(pixels: np.ndarray, levels: float) -> np.ndarray:
    """`pixels` (uint8) lightened in place by `levels` of 255, rounded; negative darkens."""
    pixels[...] = np.clip(pixels.astype(np.int16) + round(levels), 0, 255)
    return pixels
