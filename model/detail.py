"""The 128 px detail stage: faces, ages and edits around `model.flow.detail.DetailFlow`.

A 128 px aligned face is its 64 px low band (the 2x2 average, the face the main flow models) plus its
detail (three Haar bands, 9 x 64 x 64). The detail flow models p(detail | low band, age); an edit encodes
the face's detail under its own low band and age and decodes the same standardized latent under the edited
low band and the target age. Saved as detail.safetensors + detail_config.json; nothing is unpickled.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from model.condition import DEFAULT_AGE_KNOTS, age_weights
from model.flow.detail import DetailConfig, DetailFlow, haar_merge, haar_split

WEIGHTS = "detail.safetensors"
CONFIG = "detail_config.json"
RESOLUTION = 128
# sources whose photos cover a 128 px crop without upsampling (utkface-64 rows are upsampled: never used)
SOURCES = ("utkface-200", "aaf-192")
# the detail of 8-bit pixels in bits per detail coefficient: 8 bits per pixel plus 1, since each coefficient
# is half an orthonormal Haar coefficient (|det| = 2**-1 per dimension)
BITS_OFFSET = 8.0 + 1.0


def age_condition(ages, knots: tuple[float, ...] = DEFAULT_AGE_KNOTS) -> torch.Tensor:
    """Ages in years -> the detail flow's condition vectors (hat-function weights over the age knots)."""
    return age_weights(torch.as_tensor(np.asarray(ages, np.float32)).reshape(-1), tuple(knots))


def padded_context(low: torch.Tensor, margin: int, blur: int = 1) -> torch.Tensor:
    """The low band (in [0, 1]) as the flow's context: blurred to blocks of `blur` pixels (averaged, then
    bilinearly interpolated back; 1: as it is), centred and padded by the encoder's margin with its own
    border pixels. A blurred context keeps where the face's parts are and hides the fine tone of its low
    band, so the detail has to take its strength from the age rather than read it off the low band (and
    an edit's own small artefacts in the low band are not drawn out into lines)."""
    if blur > 1:
        low = F.interpolate(F.avg_pool2d(low, blur), size=low.shape[-2:], mode="bilinear", align_corners=False)
    return F.pad(low - 0.5, (margin,) * 4, mode="replicate")


@dataclass
class DetailLatents:
    """N faces' detail encoded under their own low bands and ages (`DetailStage.encode`)."""

    detail: torch.Tensor  # N x 9 x 64 x 64: the Haar detail bands
    context: torch.Tensor  # the flow's padded contexts of the faces' low bands
    latent: torch.Tensor  # the standardized latents
    ages: np.ndarray  # N float64: the ages they were encoded under

    def subset(self, index: np.ndarray) -> DetailLatents:
        i = torch.from_numpy(np.asarray(index, np.int64)).to(self.detail.device)
        return DetailLatents(self.detail[i], self.context[i], self.latent[i], self.ages[np.asarray(index)])


@dataclass
class DetailFaces:
    images: np.ndarray  # N x 128 x 128 x 3 uint8
    ages: np.ndarray  # N float32

    def __len__(self) -> int:
        return len(self.ages)

    def pixels(self, indices, device: str | torch.device = "cpu", noise: torch.Tensor | None = None) -> torch.Tensor:
        """Faces at `indices` as N x 3 x 128 x 128 floats (k + offset) / 256: the bin offset is `noise`
        (uniform in [0, 1) for training and evaluation), the bin centre when None."""
        k = torch.from_numpy(np.ascontiguousarray(self.images[np.asarray(indices)])).permute(0, 3, 1, 2).float()
        return ((k + (0.5 if noise is None else noise)) / 256.0).to(device)


def load_detail_faces(
    folder: Path, split: str | None = "train", sources: tuple[str, ...] = SOURCES, limit: int = 0
) -> DetailFaces:
    """The 128 px crops of one split from the given sources only (`model.prepare`'s format)."""
    folder = Path(folder)
    with open(folder / "labels.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if (split is None or r["split"] == split) and r["source"] in sources]
    if limit:
        rows = rows[:limit]
    index = np.array([int(r["index"]) for r in rows], dtype=np.int64)
    images = np.load(folder / f"faces_{RESOLUTION}.npy", mmap_mode="r")
    return DetailFaces(images=np.asarray(images[index]), ages=np.array([float(r["age"]) for r in rows], np.float32))


class DetailStage:
    """The detail flow with its age encoding: likelihood of a face's detail, and the edit the editor calls."""

    def __init__(
        self, flow: DetailFlow, age_knots: tuple[float, ...] = DEFAULT_AGE_KNOTS, context_blur: int = 1
    ) -> None:
        self.flow = flow
        self.age_knots = tuple(float(a) for a in age_knots)
        if context_blur < 1 or 64 % context_blur:
            raise ValueError(f"context_blur must divide 64, not {context_blur}")
        self.context_blur = int(context_blur)

    @classmethod
    def new(
        cls, config: DetailConfig | None = None, age_knots: tuple[float, ...] = DEFAULT_AGE_KNOTS, context_blur: int = 1
    ) -> DetailStage:
        config = replace(config or DetailConfig(), condition_dim=len(age_knots))
        return cls(DetailFlow(config), age_knots, context_blur)

    @property
    def margin(self) -> int:
        return self.flow.config.margin

    def context(self, low: torch.Tensor) -> torch.Tensor:
        """Whole 64 px low bands (N x 3 x 64 x 64) -> the flow's padded contexts."""
        return padded_context(low, self.margin, self.context_blur)

    def condition(self, ages, device) -> torch.Tensor:
        return age_condition(ages, self.age_knots).to(device)

    # ---- likelihood -----------------------------------------------------------------------------------
    def log_prob(self, detail: torch.Tensor, context: torch.Tensor, ages) -> torch.Tensor:
        """Log-density (nats) of detail patches under their padded contexts and ages."""
        return self.flow.log_prob(detail, context, self.condition(ages, detail.device))

    def log_prob_and_age_nats(
        self, detail: torch.Tensor, context: torch.Tensor, ages
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-density (nats) of detail patches under their contexts and ages, and the cross-entropy (nats)
        of their ages as the flow's own likelihoods over the age knots tell them (Bayes with a flat prior
        over the knots; the true age's hat weights as the target): one pass of the flow, for a flow whose
        condition enters its prior. Training on the second term keeps the flow from ignoring the age."""
        device = detail.device
        knots = self.condition(self.age_knots, device)  # K x K: one hot at each knot
        own = self.condition(ages, device)
        conditions = torch.cat([own[None], knots[:, None].expand(-1, len(detail), -1)], 0)
        log_p = self.flow.log_prob_under(detail, context, conditions)
        posterior = torch.log_softmax(log_p[:, 1:], 1)
        return log_p[:, 0], -(own * posterior).sum(1)

    def bits_per_dim(self, pixels: torch.Tensor, ages) -> torch.Tensor:
        """Bits per detail coefficient of each 128 px face (N x 3 x 128 x 128, dequantized pixels / 256)
        given its 64 px low band and age."""
        low, detail = haar_split(pixels)
        log_p = self.log_prob(detail, self.context(low), ages)
        return -log_p / (detail[0].numel() * math.log(2.0)) + BITS_OFFSET

    # ---- the edit -------------------------------------------------------------------------------------
    @torch.no_grad()
    def change(self, faces: torch.Tensor, low_change: torch.Tensor, ages, target_ages) -> torch.Tensor:
        """The 128 px change of N aligned faces (N x 3 x 128 x 128 in [0, 1]) whose 64 px version changes by
        `low_change` (N x 3 x 64 x 64, the main flow's after - before) and whose age goes from `ages` to
        `target_ages`: the low band moves by `low_change`, and the detail to its standardized latent decoded
        under the edited low band and target age (two passes of the flow: the inverse under the original
        ones would give the detail back). A face whose low band and age do not change has a change of
        exactly zero."""
        device = faces.device
        low, detail = haar_split(faces)
        ages, target_ages = np.asarray(ages, np.float64).reshape(-1), np.asarray(target_ages, np.float64).reshape(-1)
        moved = (low_change.flatten(1) != 0).any(1).cpu().numpy() | (ages != target_ages)
        detail_change = torch.zeros_like(detail)
        index = np.flatnonzero(moved)
        if len(index):
            i = torch.from_numpy(index).to(device)
            before = self.context(low[i])
            after = self.context(low[i] + low_change[i])
            source = self.condition(ages[index], device)
            target = self.condition(target_ages[index], device)
            eps = self.flow.standardize(detail[i], before, source)
            detail_change[i] = self.flow.generate(eps, after, target) - detail[i]
        return haar_merge(low_change, detail_change)

    @torch.no_grad()
    def encode(self, faces: torch.Tensor, ages) -> DetailLatents:
        """The detail of N aligned faces (N x 3 x 128 x 128 in [0, 1]) as its standardized latent under the
        face's own low band and age: what `redraw` decodes at other ages."""
        device = next(self.flow.parameters()).device
        low, detail = haar_split(faces.to(device))
        ages = np.asarray(ages, np.float64).reshape(-1)
        context = self.context(low)
        latent = self.flow.standardize(detail, context, self.condition(ages, device))
        return DetailLatents(detail=detail, context=context, latent=latent, ages=ages)

    @torch.no_grad()
    def redraw(self, latents: DetailLatents, target_ages) -> torch.Tensor:
        """The 128 px change that redraws each encoded face's detail at its target age under its own low band
        (N x 3 x 128 x 128, on the stage's device; no 64 px part): exactly zero for a face whose age does not
        change."""
        target_ages = np.asarray(target_ages, np.float64).reshape(-1)
        detail_change = torch.zeros_like(latents.detail)
        index = np.flatnonzero(latents.ages != target_ages)
        if len(index):
            i = torch.from_numpy(index).to(detail_change.device)
            target = self.condition(target_ages[index], detail_change.device)
            detail_change[i] = self.flow.generate(latents.latent[i], latents.context[i], target) - latents.detail[i]
        n, _, side, _ = detail_change.shape
        return haar_merge(detail_change.new_zeros(n, 3, side, side), detail_change)

    @torch.no_grad()
    def aged_change(self, faces: torch.Tensor, ages, target_ages) -> torch.Tensor:
        """The 128 px change that redraws the detail of N aligned faces (N x 3 x 128 x 128 in [0, 1]) at their
        target ages under their own low bands: the detail's standardized latent under the face's low band
        and `ages`, decoded under the same low band and `target_ages`. The low band does not change (the
        main flow's edit brings that), so the detail follows the age alone, and no small artefact of an
        edited low band is drawn out into lines. Exactly zero for a face whose age does not change; only
        the faces whose age changes are encoded. This is the form the editor uses (`model.editor`)."""
        ages, target_ages = np.asarray(ages, np.float64).reshape(-1), np.asarray(target_ages, np.float64).reshape(-1)
        change = torch.zeros_like(faces)
        index = np.flatnonzero(ages != target_ages)
        if len(index):
            i = torch.from_numpy(index).to(faces.device)
            change[i] = self.redraw(self.encode(faces[i], ages[index]), target_ages[index]).to(faces.device)
        return change

    def edit(self, faces: torch.Tensor, low_change: torch.Tensor, ages, target_ages) -> torch.Tensor:
        """The edited 128 px faces (not clamped): `faces + change(...)`."""
        return faces + self.change(faces, low_change, ages, target_ages)

    def info(self) -> dict:
        """What `GET /v1/model` says of the stage."""
        return {
            "resolution": RESOLUTION,
            "context_blur": self.context_blur,
            "age_knots": list(self.age_knots),
            "parameters": sum(p.numel() for p in self.flow.parameters()),
        }

    # ---- saving ---------------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.flow.state_dict().items()}
        tmp = folder / (WEIGHTS + ".tmp")
        save_file(state, str(tmp))
        tmp.replace(folder / WEIGHTS)
        (folder / CONFIG).write_text(self.config_json())

    def config_json(self) -> str:
        return json.dumps(
            {
                "resolution": RESOLUTION,
                "flow": self.flow.config.to_dict(),
                "age_knots": list(self.age_knots),
                "context_blur": self.context_blur,
            },
            indent=2,
        )

    @classmethod
    def from_config_json(cls, text: str) -> DetailStage:
        values = json.loads(text)
        flow = DetailFlow(DetailConfig(**values["flow"]))
        return cls(flow, tuple(values["age_knots"]), int(values.get("context_blur", 1)))

    @classmethod
    def load(cls, folder: Path, device: str | torch.device = "cpu") -> DetailStage:
        folder = Path(folder)
        stage = cls.from_config_json((folder / CONFIG).read_text())
        stage.flow.load_state_dict(load_file(str(folder / WEIGHTS), device="cpu"))
        stage.flow.to(device).eval()
        return stage


@torch.no_grad()
def evaluate_detail_bits_per_dim(
    stage: DetailStage, faces: DetailFaces, device, limit: int = 0, batch: int = 32
) -> float:
    """Mean held-out bits per detail coefficient of whole faces (uniform dequantization noise from a fixed
    seed, so that every evaluation sees the same noise), each under its own low band and age."""
    n = len(faces) if not limit else min(limit, len(faces))
    if n == 0:
        return float("nan")
    was_training = stage.flow.training
    stage.flow.eval()
    noise = torch.Generator().manual_seed(0)
    total = 0.0
    for start in range(0, n, batch):
        idx = np.arange(start, min(n, start + batch))
        x = faces.pixels(idx, device, torch.rand(len(idx), 3, RESOLUTION, RESOLUTION, generator=noise))
        total += stage.bits_per_dim(x, faces.ages[idx]).sum().item()
    stage.flow.train(was_training)
    return total / n


def patch_batch(
    stage: DetailStage, faces: DetailFaces, indices, patch: int, generator: torch.Generator, device
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """One random `patch` x `patch` window of the 64 x 64 detail grid per face (at an offset that keeps
    the flow's squeezes on the whole face's grid), a random mirror and uniform dequantization noise, all
    from `generator`; with the matching window of the padded low band. Returns detail, context and ages."""
    n = len(indices)
    side = RESOLUTION // 2
    step = 2 ** (stage.flow.config.levels - 1)
    slots = (side - patch) // step + 1
    offsets = torch.randint(slots, (n, 2), generator=generator) * step
    flip = torch.rand(n, generator=generator) < 0.5
    noise = torch.rand(n, 3, RESOLUTION, RESOLUTION, generator=generator)
    x = faces.pixels(indices, "cpu", noise)
    x[flip] = x[flip].flip(3)
    low, detail = haar_split(x)
    context = stage.context(low)
    m2 = patch + 2 * stage.margin
    details = torch.stack([detail[i, :, y : y + patch, x0 : x0 + patch] for i, (y, x0) in enumerate(offsets.tolist())])
    contexts = torch.stack([context[i, :, y : y + m2, x0 : x0 + m2] for i, (y, x0) in enumerate(offsets.tolist())])
    return details.to(device), contexts.to(device), faces.ages[np.asarray(indices)]
