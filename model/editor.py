"""AgeEditor: the one object that the service, the CLI, the benchmarks and the tests hold.

It owns the flow, the age trajectory and the face aligner, and runs the whole pipeline:
detect -> align -> encode -> read the current age -> move along the age trajectory -> decode ->
apply the change to the larger work crop -> paste back into the photo.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from model.age import AgeReading, AgeTrajectory, load_trajectory
from model.age_shape import SHAPE_KEY, AgeShape
from model.age_template import TEMPLATE_KEY, AgeTemplate
from model.align import (
    AlignedFace,
    DetectedFace,
    FaceAligner,
    crop_footprint,
    invert_affine,
    paste_back,
    scaled,
    stack_crops,
)
from model.checkpoint import load_flow
from model.colour import (
    blotch_shares,
    keep_cheek_colour,
    keep_skin_tone,
    keep_structure,
    limit_patches,
    no_added_tint,
    within_gamut,
)
from model.detail import CONFIG as DETAIL_CONFIG
from model.detail import RESOLUTION as DETAIL_RESOLUTION
from model.detail import DetailLatents, DetailStage
from model.edit_rules import (
    NO_FACE,
    FaceTooSmallError,
    NoFaceError,
    check_one_kind_of_edit,
    face_too_small_message,
    no_plausible_face_message,
)
from model.face_basis import BASIS_KEY, FaceBasis
from model.fine_detail import DETAIL_KEY, DetailEnergy
from model.masks import face_mask
from model.older_structure import OLDER_KEY, OlderStructure
from model.side_threads import beside

EDITOR_CONFIG = "editor.json"
# editor.json key: [low, high] exact bits/dim (Glow.exact_bits_per_dim) of an aligned crop outside which a
# detection is not edited as a face (model.guard)
PLAUSIBLE_BITS_KEY = "plausible_face_bits_per_dim"
# editor.json key: {"max_bits_per_dim": ...}, real held-out faces' 95th percentile of exact bits/dim (model.guard)
GUARD_KEY = "likelihood_guard"
# editor.json key: {"max_departure": ..., "sigma_64": ..., "max_line_departure": ...}, how far an edit's broad
# change, and the change itself, may depart from its median over the skin (limit_patches); without it the
# change is not limited
PATCH_LIMIT_KEY = "patch_limit"
# editor.json key: {"sigma_64", "area_sigma_64", "max_softening", "grow_64", "feature_depth", "max_growth"}: an
# edit toward a younger age keeps the face's own structure (keep_structure); without it the younger change is
# kept as the flow drew it
STRUCTURE_KEY = "younger_structure"
# editor.json key: {"max_gain": ..., "max_turn": ...}: an edit's finished change adds no tint of its own: at each
# pixel of the work crop the edited colour is the photo's own there scaled by 0 to max_gain, plus at most max_turn
# times its strength across it (model.colour.no_added_tint), so a grey photo stays grey; without it the colour
# is as drawn
TINT_KEY = "tint_limit"
GUARD_ROUNDS = 3  # at most this many rounds of the search for the largest strength within the limit
GUARD_STEP = 0.05  # a face's search stops once its next round would raise its strength by less than this
PASTE_STRIP_PIXELS = 1 << 20  # photo pixels pasted at once: bounds paste_back's float copies per face

# why a detected face was not edited, for the person who sent the photo
SKIP_REASONS = {
    "too_small": "smaller than the smallest face that can be edited",
    "not_a_face": "the model finds it implausible as a face",
    "largest_only": "only the largest face was asked for",
    "face_limit": "beyond the limit on faces per request",
    "work_budget": "beyond the work budget of the request (faces x ages x pixels)",
}


@dataclass
class FaceEdit:
    """One aligned face before and after an edit, at the flow's resolution."""

    before: torch.Tensor  # 3 x S x S in [0, 1]
    after: torch.Tensor  # 3 x S x S in [0, 1]
    age_before: float
    age_after: float  # the age the face was taken to: age_before + strength x (age_target - age_before)
    age_target: float | None = None  # the age asked for, clamped into the age range (None: age_after)
    clamped: bool = False  # the age asked for was outside the age range
    strength: float = 1.0  # the share of the change applied; below 1 where the likelihood guard scaled it back

    @property
    def change(self) -> torch.Tensor:
        return self.after - self.before

    @property
    def shift(self) -> float:
        return self.age_after - self.age_before


@dataclass
class FaceResult:
    """One edited face: the face as detected and aligned (its crops as cut), and what the edit made of it."""

    aligned: AlignedFace
    age_before: float
    age_after: float
    aligned_after: torch.Tensor  # 3 x S x S in [0, 1]: the aligned face after the edit, at the flow's resolution
    work_after: np.ndarray | None = None  # work_size x work_size x 3 uint8: the aligned face as pasted back
    age_target: float | None = None  # as FaceEdit's
    clamped: bool = False
    strength: float = 1.0

    @property
    def face(self) -> DetectedFace:
        return self.aligned.face

    @property
    def shift(self) -> float:
        return self.age_after - self.age_before


@dataclass
class WorkDetail:
    """The fine detail of N work crops, read once for every age they are taken to (`AgeEditor.read_detail`)."""

    rescaled: torch.Tensor | None  # what the fitted curve rescales (None: no curve)
    latents: DetailLatents | None = None  # the detail stage's encoding of the crops' 128 px versions
    # the stage's 128 px changes drawn ahead: (target ages, changes), one pair per array of targets
    redrawn: list[tuple[np.ndarray, torch.Tensor]] = field(default_factory=list)


@dataclass
class SkippedFace:
    face: DetectedFace
    reason: str  # a key of SKIP_REASONS


@dataclass(frozen=True)
class EditLimits:
    """How much one request may edit. `max_faces`: faces edited at most, largest first. `work_pixels`: the
    sum over edited faces of ages x the result pixels each face's paste covers (at least the work crop);
    the largest face is always edited, and further faces only while the sum stays within it."""

    max_faces: int = 16
    work_pixels: int = 64_000_000


@dataclass
class FacePlan:
    """The faces of a photo that will be edited, and every other face found, with why it is not."""

    aligned: list[AlignedFace]
    skipped: list[SkippedFace]
    bits_per_dim: np.ndarray  # exact bits/dim of each aligned face (Glow.exact_bits_per_dim)
    reading: AgeReading  # each aligned face's age, gender and ethnicity, read from the same encoding

    @property
    def found(self) -> int:
        return len(self.aligned) + len(self.skipped)


@dataclass
class PhotoResult:
    image: np.ndarray | None  # H x W x 3 uint8, the photo with every edited face pasted back (None: faces only)
    faces: list[FaceResult]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    skipped: list[SkippedFace] = field(default_factory=list)

    @property
    def found(self) -> int:
        return len(self.faces) + len(self.skipped)


class _Stopwatch:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
        self.last = now


class AgeEditor:
    def __init__(
        self,
        trajectory: AgeTrajectory,
        settings: dict,
        aligner: FaceAligner | None = None,
        work_size: int = 256,
        detail_stage: DetailStage | None = None,
        age_template: AgeTemplate | None = None,
        face_basis: FaceBasis | None = None,
        age_shape: AgeShape | None = None,
        older_structure: OlderStructure | None = None,
    ) -> None:
        self.trajectory = trajectory
        self.flow = trajectory.flow
        self.settings = settings
        self.work_size = work_size
        self._aligner = aligner
        # the fitted fine-detail energy over age (model.fine_detail); None: the photo's detail is kept as is
        self.fine_detail = DetailEnergy.from_dict(settings[DETAIL_KEY]) if DETAIL_KEY in settings else None
        # the 128 px detail flow (model.detail): redraws the face's detail at the new age; None: the fitted
        # curve rescales the photo's own detail instead
        self.detail_stage = detail_stage
        # the aging template from real faces (model.age_template), added after the guard; None: not added
        self.age_template = age_template
        # the detail real faces can have (model.face_basis): an edit's fine change on the skin is kept only as
        # far as it is made of it; None: kept as the flow drew it
        self.face_basis = face_basis
        # the face's shape at each age (model.age_shape): the work crop's pixels warped to the age reached;
        # None: the shape is as the flow's change leaves it
        self.age_shape = age_shape
        # the rule that lets an edit toward an older age draw new lines only where real faces of that age
        # have them (model.older_structure); None: an older edit's lines are as the flow drew them
        self.older_structure = older_structure

    @classmethod
    def from_dir(
        cls, folder: str | Path = "weights", device: str | torch.device = "cpu", aligner: FaceAligner | None = None
    ) -> AgeEditor:
        folder = Path(folder)
        flow = load_flow(folder, device)
        settings = json.loads((folder / EDITOR_CONFIG).read_text()) if (folder / EDITOR_CONFIG).exists() else {}
        stage = DetailStage.load(folder, device) if (folder / DETAIL_CONFIG).exists() else None
        template = AgeTemplate.load(folder, settings[TEMPLATE_KEY]) if TEMPLATE_KEY in settings else None
        basis = FaceBasis.load(folder, settings[BASIS_KEY]) if BASIS_KEY in settings else None
        shape = AgeShape.load(folder, settings[SHAPE_KEY]) if SHAPE_KEY in settings else None
        older = OlderStructure.load(folder, settings[OLDER_KEY]) if OLDER_KEY in settings else None
        trajectory = load_trajectory(folder, flow, settings)
        return cls(
            trajectory,
            settings,
            aligner,
            detail_stage=stage,
            age_template=template,
            face_basis=basis,
            age_shape=shape,
            older_structure=older,
        )

    @property
    def aligner(self) -> FaceAligner:
        if self._aligner is None:
            self._aligner = FaceAligner(device=self.device)
        return self._aligner

    @property
    def framing(self) -> str:
        """The crop the flow was trained on (model.align.FRAMINGS), as the export recorded it."""
        return str(self.settings.get("model", {}).get("framing", "loose"))

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
        return {
            "resolution": self.resolution,
            "age_range": list(self.age_range),
            "trajectory": self.trajectory.name,
            **self.settings.get("model", {}),
            # the photo's own fine detail is rescaled to the new age (model.fine_detail)
            "fine_detail": self.fine_detail is not None,
            # the 128 px detail flow that redraws the face's detail at the new age (model.detail)
            "detail": None if self.detail_stage is None else self.detail_stage.info(),
            # the aging template from real faces (model.age_template)
            "age_template": None if self.age_template is None else self.settings.get(TEMPLATE_KEY),
            # an edit's fine change kept as far as real faces' detail is made of it (model.face_basis)
            "face_basis": None if self.face_basis is None else self.settings.get(BASIS_KEY),
            # the face's shape warped to the age reached (model.age_shape)
            "age_shape": None if self.age_shape is None else self.settings.get(SHAPE_KEY),
            # an edit's broad patches over the skin are flattened, and its lines held to a depth (limit_patches)
            "patch_limit": None
            if self.patch_limit is None
            else {
                **dict(zip(("max_departure", "sigma_64"), self.patch_limit)),
                "max_line_departure": self.line_limit,
            },
            # an edit toward a younger age keeps the face's own structure (keep_structure)
            "younger_structure": self.settings.get(STRUCTURE_KEY) if self.younger_structure is not None else None,
            # an edit toward an older age draws new lines only where real faces fold (model.older_structure)
            "older_structure": None if self.older_structure is None else self.older_structure.settings_dict(),
            # the finished change adds no tint of its own (untinted_change)
            "tint_limit": None if self.tint_limit is None else dict(zip(("max_gain", "max_turn"), self.tint_limit)),
        }

    # ---- aligned faces ----------------------------------------------------------------------------
    @torch.no_grad()
    def estimate_age(self, faces: torch.Tensor) -> np.ndarray:
        """Ages in years of N aligned faces (N x 3 x S x S in [0, 1]), read from their latents."""
        return self.trajectory.estimate(faces.to(self.device)).ages

    @torch.no_grad()
    def edit(
        self,
        faces: torch.Tensor,
        years=None,
        target_age=None,
        reading: AgeReading | None = None,
        original_bits: np.ndarray | None = None,
    ) -> list[FaceEdit]:
        """Age N aligned faces by `years` (a number or one per face) or to `target_age` (likewise).
        `reading`: the faces' ages as `trajectory.estimate` read them, and `original_bits` their exact
        bits/dim, when already known."""
        check_one_kind_of_edit(years, target_age)
        faces = faces.to(self.device)
        if reading is None:  # one encoding gives the reading and, for the guard, the faces' own bits/dim
            latents, contexts, logdet = self.flow.flow_forward(faces - 0.5)
            reading = self.trajectory.read(latents, contexts)
            if original_bits is None:
                original_bits = finite_or_inf(self.flow.encoding_bits_per_dim(latents, contexts, logdet).cpu().numpy())
        target, clamped = self.targets(reading.ages, years, target_age)
        after, bits = self._moved(faces, reading, target)
        strength = np.ones(len(faces))
        if self.guard_limit is not None:
            after, strength = self._guarded(faces, reading, target, after, bits, self.guard_limit, original_bits)
        # a latent moved so far that the inverse overflows gives no face at all: such a face is given back
        broken = ~torch.isfinite(after).flatten(1).all(1).cpu().numpy()
        strength[broken] = 0.0
        reached = reading.ages + strength * (target - reading.ages)
        if self.age_template is not None:  # the folds of the age reached, where real faces have them
            folds = self.age_template.change(reading.ages, reached, after.shape[-1], self.framing, faces)
            after = (after + folds.to(after.device)).clamp(0, 1)
        unmoved = torch.from_numpy((target == reading.ages) | (strength == 0)).to(faces.device)
        after = torch.where(unmoved[:, None, None, None], faces, after)  # a zero edit gives the face back exactly
        return [
            FaceEdit(
                before=f.cpu(),
                after=a.cpu(),
                age_before=float(b),
                age_after=float(r),
                age_target=float(t),
                clamped=bool(c),
                strength=float(s),
            )
            for f, a, b, r, t, c, s in zip(faces, after, reading.ages, reached, target, clamped, strength)
        ]

    def targets(self, ages: np.ndarray, years=None, target_age=None) -> tuple[np.ndarray, np.ndarray]:
        """The ages asked for faces read at `ages`, clamped into the age range, and which were clamped."""
        low, high = self.age_range
        if target_age is None:
            target = ages + np.broadcast_to(np.asarray(years, np.float64), ages.shape)
        else:
            target = np.broadcast_to(np.asarray(target_age, np.float64), ages.shape).copy()
        return np.clip(target, low, high), (target < low) | (target > high)

    def _moved(self, faces: torch.Tensor, reading: AgeReading, target: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """The faces taken to `target` ages along the trajectory, with the colour and gamut controls, and the
        exact bits/dim of what the flow decoded (before those controls, read in the same pass: the guard
        rates what the edit made of the face, at no extra cost)."""
        after, bits = self.trajectory.move(faces, reading, target, with_bits=True)
        if self.trajectory.keep_skin_tone:
            after = keep_skin_tone(faces, no_added_tint(faces, after), self.framing)
        if self.face_basis is not None:  # the fine change, as far as real faces' detail is made of it
            after = self.face_basis.project(faces, after)
        if self.patch_limit is not None:  # before the cheeks' colour is restored: clipping a patch moves it
            after = limit_patches(
                faces, after, *self.patch_limit, framing=self.framing, max_line_departure=self.line_limit
            )
        after = within_gamut(faces, after).clamp(0, 1)
        if self.trajectory.keep_skin_tone:
            after = keep_cheek_colour(faces, after, framing=self.framing)
        younger = np.flatnonzero(np.asarray(target) < reading.ages)
        if self.younger_structure is not None and len(younger):  # a younger face is this face, softened
            index = torch.from_numpy(younger).to(after.device)
            after = after.index_copy(0, index, keep_structure(faces[index], after[index], *self.younger_structure))
        older = np.flatnonzero(np.asarray(target) > reading.ages)
        if self.older_structure is not None and len(older):  # an older face's new lines go where faces fold
            index = torch.from_numpy(older).to(after.device)
            kept = self.older_structure.apply(
                faces[index], after[index], reading.ages[older], np.asarray(target)[older]
            )
            if self.trajectory.keep_skin_tone:  # what the rule took away may have shaded the cheeks: restore them
                kept = keep_cheek_colour(faces[index], kept, framing=self.framing)
            after = after.index_copy(0, index, kept)
        return after, finite_or_inf(bits.cpu().numpy())

    @property
    def younger_structure(self) -> tuple[float, float, float, int, float, float] | None:
        """(sigma_64, area_sigma_64, max_softening, grow_64, feature_depth, max_growth) of `keep_structure`
        from editor.json, None where it has none."""
        values = self.settings.get(STRUCTURE_KEY)
        if not values:
            return None
        return (
            float(values["sigma_64"]),
            float(values["area_sigma_64"]),
            float(values.get("max_softening", 1.0)),
            int(values.get("grow_64", 0)),
            float(values.get("feature_depth", 0.0)),
            float(values.get("max_growth", 1.0)),
        )

    @property
    def patch_limit(self) -> tuple[float, float] | None:
        """(max_departure, sigma_64) of `limit_patches` from editor.json, None where it has none."""
        values = self.settings.get(PATCH_LIMIT_KEY)
        return None if not values else (float(values["max_departure"]), float(values["sigma_64"]))

    @property
    def line_limit(self) -> float | None:
        """`max_line_departure` of editor.json's patch limit: how far the change itself (not blurred) may depart
        from its median over the skin (`limit_patches`); None where it does not say."""
        value = (self.settings.get(PATCH_LIMIT_KEY) or {}).get("max_line_departure")
        return None if value is None else float(value)

    @property
    def guard_limit(self) -> tuple[float, float] | None:
        """Bits/dim (editor.json) above which an edited face is less likely than real faces, and the rise
        over its original allowed to a face already beyond that (the real faces' spread)."""
        guard = self.settings.get(GUARD_KEY)
        return (float(guard["max_bits_per_dim"]), float(guard.get("max_rise_bits_per_dim", 0.0))) if guard else None

    @property
    def blotch_limit(self) -> float | None:
        """The share of the central face an edit may blotch (editor.json guard `max_blotch_share`), if set."""
        guard = self.settings.get(GUARD_KEY) or {}
        return float(guard["max_blotch_share"]) if "max_blotch_share" in guard else None

    def _guarded(
        self,
        faces: torch.Tensor,
        reading: AgeReading,
        target: np.ndarray,
        after: torch.Tensor,
        bits: np.ndarray,
        limit: tuple[float, float],
        original_bits: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, np.ndarray]:
        """The likelihood guard: each edited face (`after`, whose decoding measured `bits`) less likely under
        the flow than the `limit` (exact bits/dim, or its original's plus the allowed rise, where that is
        more) is edited again at a smaller strength until it is within; returns the faces and the strength
        each got. `original_bits`: the faces' own exact bits/dim, when already measured.

        The strength is searched by regula falsi (the Illinois variant) between the original (strength 0,
        within) and the full edit (strength 1, beyond): bits/dim rises close to linearly with the strength
        for older edits, so each round lands near the largest strength allowed. A face's search ends after
        GUARD_ROUNDS rounds, or sooner once a strength within is found and the next round would add less
        than GUARD_STEP to it. Only strengths found within are ever returned. A decoding rated beyond the
        plausible range of faces (`plausible_bits_per_dim`) counts as an overflow: its bits/dim can reach
        1e9 where the inverse nearly blows up, which gives no useful slope, so the bracket is halved.

        With `max_blotch_share` in the guard's settings, a blotched edit (`blotch_shares` above it) is scaled
        back the same way: the search then follows the larger of the two excesses, the bits/dim's in units
        of the allowed rise and the blotched share's in units of its limit."""
        ceiling = self.plausible_bits_per_dim[1] if self.plausible_bits_per_dim else np.inf
        blotch = self.blotch_limit
        spread = max(limit[1], 0.05)
        strength = np.ones(len(faces))
        allowed = np.full(len(faces), limit[0])
        beyond = np.flatnonzero(bits > limit[0])  # only these need their original's bits/dim
        original = np.full(len(faces), np.nan)
        if len(beyond):
            original[beyond] = (
                original_bits[beyond] if original_bits is not None else self.exact_bits_per_dim(faces[beyond])
            )
            allowed[beyond] = np.maximum(limit[0], original[beyond] + limit[1])

        def excess(index: np.ndarray, edited: torch.Tensor, edited_bits: np.ndarray) -> np.ndarray:
            """How far each edit of faces[index] is beyond the guard's limits: at most 0 within them."""
            out = (np.where(edited_bits > ceiling, np.inf, edited_bits) - allowed[index]) / spread
            if blotch is not None:
                out = np.maximum(out, (blotch_shares(faces[index], edited, self.framing) - blotch) / blotch)
            return out

        f_full = excess(np.arange(len(faces)), after, bits)
        over = np.flatnonzero(f_full > 0)
        if not len(over):
            return after, strength
        after = after.clone()
        # the excess at the bracket's ends: below zero at `low`, above at `high`; the original has no blotch,
        # and where its bits/dim were not needed (the edit's were within the limit) they are within too
        low, high = np.zeros(len(over)), np.ones(len(over))
        f_low = np.nan_to_num((original[over] - allowed[over]) / spread, nan=-1.0)
        if blotch is not None:
            f_low = np.maximum(f_low, -1.0)
        f_high = f_full[over]
        side = np.zeros(len(over))  # which end moved last (-1 low, +1 high): Illinois halves the other
        best = faces[over].clone()
        part = subset_reading(reading, over)
        searching = np.ones(len(over), bool)
        for _ in range(GUARD_ROUNDS):
            trial_strength = np.where(
                np.isfinite(f_high),  # an overflowing edit gives no slope: halve the bracket instead
                np.clip(low - f_low * (high - low) / (f_high - f_low), low, high),
                (low + high) / 2,
            )
            # aim a little inside the bracket, where a near-linear rise keeps the trial within the limit
            trial_strength = low + 0.97 * (trial_strength - low)
            searching &= ~((side < 0) & (trial_strength - low < GUARD_STEP))
            if not searching.any():
                break
            now = np.flatnonzero(searching)
            ages = part.ages[now]
            trial, trial_bits = self._moved(
                faces[over[now]], subset_reading(part, now), ages + trial_strength[now] * (target[over[now]] - ages)
            )
            trial_excess = np.full(len(over), np.nan)
            trial_excess[now] = excess(over[now], trial, trial_bits)
            fits = np.zeros(len(over), bool)
            fits[now] = trial_excess[now] <= 0
            kept = fits[now]
            best[torch.from_numpy(now[kept])] = trial[torch.from_numpy(kept)]
            miss = searching & ~fits
            f_high = np.where(fits & (side < 0), f_high / 2, f_high)
            f_low = np.where(miss & (side > 0), f_low / 2, f_low)
            low, f_low = np.where(fits, trial_strength, low), np.where(fits, trial_excess, f_low)
            high, f_high = np.where(miss, trial_strength, high), np.where(miss, trial_excess, f_high)
            side = np.where(fits, -1.0, np.where(miss, 1.0, side))
        after[over], strength[over] = best, low
        return after, strength

    @torch.no_grad()
    def bits_per_dim(self, faces: torch.Tensor) -> np.ndarray:
        """Bits/dim of the faces' n_bits pixels (at each bin's centre): the flow's own measure of faces."""
        return self.flow.bits_per_dim(faces.to(self.device)).cpu().numpy()

    @torch.no_grad()
    def exact_bits_per_dim(self, faces: torch.Tensor) -> np.ndarray:
        """Bits/dim at the faces' own values (`Glow.exact_bits_per_dim`): what the guard and the
        plausibility check compare."""
        return self.flow.exact_bits_per_dim(faces.to(self.device)).cpu().numpy()

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 0.7, seed: int = 0) -> torch.Tensor:
        return self.flow.sample(n, temperature, seed).clamp(0, 1).cpu()

    # ---- photos ------------------------------------------------------------------------------------
    @property
    def plausible_bits_per_dim(self) -> tuple[float, float] | None:
        """The range of bits/dim (editor.json) outside which a detection is not edited as a face."""
        value = self.settings.get(PLAUSIBLE_BITS_KEY)
        return (float(value[0]), float(value[1])) if value else None

    def find_faces(self, image: np.ndarray, faces: str = "all") -> list[DetectedFace]:
        """Faces to edit, largest first. Raises NoFaceError or FaceTooSmallError with a reason."""
        usable = self._usable_faces(self.aligner.detect(image))
        return usable[:1] if faces == "largest" else usable

    def _usable_faces(self, detected: list[DetectedFace]) -> list[DetectedFace]:
        return usable_faces(self.aligner, detected)

    @torch.no_grad()
    def plan_faces(
        self, image: np.ndarray, faces: str = "all", ages: int = 1, limits: EditLimits | None = None, scale: float = 1.0
    ) -> FacePlan:
        """The faces to edit, aligned, largest first, and every other face found with why it is not edited:
        too small, implausible as a face under the flow, not asked for, or beyond `limits` for `ages` ages
        with results at `scale` result pixels per photo pixel (0: faces only, no photo)."""
        limits = limits or EditLimits()
        detected = self.aligner.detect(image)
        usable = self._usable_faces(detected)
        skipped: list[SkippedFace] = []

        def skip(face: DetectedFace, reason: str) -> None:
            skipped.append(SkippedFace(face, reason))

        for face in detected:
            if self.aligner.is_too_small(face):
                skip(face, "too_small")
        if faces == "largest":
            for face in usable[1:]:
                skip(face, "largest_only")
            usable = usable[:1]
        band = self.plausible_bits_per_dim
        chosen: list[AlignedFace] = []
        chosen_bits: list[float] = []
        encodings: list[tuple[list, list]] = []  # each chosen face's latents and contexts, for its reading
        spent = 0
        for start in range(0, len(usable), limits.max_faces):  # align and rate only what may be edited
            batch = usable[start : start + limits.max_faces]
            if len(chosen) >= limits.max_faces:
                for face in batch:
                    skip(face, "face_limit")
                continue
            aligned = self.align(image, batch)
            crops = stack_crops(aligned, self.resolution).to(self.device)
            latents, contexts, logdet = self.flow.flow_forward(crops - 0.5)  # one encoding: rating and reading
            bits = finite_or_inf(self.flow.encoding_bits_per_dim(latents, contexts, logdet).cpu().numpy())
            for index, one in enumerate(aligned):
                cost = ages * self.paste_pixels(one, image.shape, scale)
                if band and not band[0] <= bits[index] <= band[1]:
                    skip(one.face, "not_a_face")
                elif len(chosen) >= limits.max_faces:
                    skip(one.face, "face_limit")
                elif chosen and spent + cost > limits.work_pixels:
                    skip(one.face, "work_budget")
                else:
                    chosen.append(one)
                    chosen_bits.append(float(bits[index]))
                    encodings.append(
                        (
                            [z[index : index + 1] for z in latents],
                            [None if c is None else c[index : index + 1] for c in contexts],
                        )
                    )
                    spent += cost
        if not chosen:
            raise NoFaceError(no_plausible_face_message(len(skipped)))
        latents = [torch.cat(level) for level in zip(*(e[0] for e in encodings))]
        contexts = [None if level[0] is None else torch.cat(level) for level in zip(*(e[1] for e in encodings))]
        return FacePlan(
            aligned=chosen,
            skipped=skipped,
            bits_per_dim=np.array(chosen_bits),
            reading=self.trajectory.read(latents, contexts),
        )

    def paste_pixels(self, aligned: AlignedFace, shape: tuple[int, ...], scale: float) -> int:
        """Result pixels that pasting the face's work crop covers, at least the work crop's."""
        side = self.work_size
        x0, y0, x1, y1 = crop_footprint(invert_affine(scaled(aligned.matrix, side)), side, shape[0], shape[1])
        return max(side * side, int(max(0, x1 - x0) * max(0, y1 - y0) * scale * scale))

    def align(self, image: np.ndarray, faces: list[DetectedFace]) -> list[AlignedFace]:
        """The faces aligned onto the model's framing, each with its crop at the flow's resolution; the work
        crop is cut only where it is read (`work_changes`, `work_after`)."""
        return [self.aligner.align(image, f, (self.resolution,), self.framing) for f in faces]

    def work_change(self, edit: FaceEdit) -> torch.Tensor:
        """The edit's change, upsampled to the work crop and smoothed so that no 64 px grain shows."""
        change = edit.change[None]
        change = F.avg_pool2d(F.pad(change, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        return F.interpolate(change, size=self.work_size, mode="bicubic", align_corners=False)[0]

    def work_changes(
        self, image: np.ndarray, aligned: list[AlignedFace], edits: list[FaceEdit], detail: WorkDetail | None = None
    ) -> list[torch.Tensor]:
        """Each face's change at the work size: its edit's (`work_change`), and with a detail stage or a fitted
        fine-detail curve also its own fine detail taken to the new age, read from its work crop (cut from
        `image` here), then with an age shape the face's shape at the new age (`shaped_change`). `detail`:
        the work crops' `read_detail`, when already at hand."""
        changes = [self.work_change(e) for e in edits]
        if (
            self.fine_detail is None
            and self.detail_stage is None
            and self.age_shape is None
            and self.tint_limit is None
        ):
            return changes
        crops = torch.stack([a.cut(image, self.work_size) for a in aligned])
        changes = [change + fine for change, fine in zip(changes, self.fine_detail_change(crops, edits, detail))]
        return list(self.untinted_change(crops, edits, self.shaped_change(crops, edits, torch.stack(changes))))

    @property
    def tint_limit(self) -> tuple[float, float] | None:
        """(max_gain, max_turn) of the tint limit in editor.json (`untinted_change`), None where it has none."""
        values = self.settings.get(TINT_KEY)
        return None if not values else (float(values["max_gain"]), float(values.get("max_turn", 0.0)))

    def untinted_change(self, crops: torch.Tensor, edits: list[FaceEdit], change: torch.Tensor) -> torch.Tensor:
        """The change (N x 3 x S x S) to N work crops with the tint it adds limited: at each pixel the edited
        colour is the crop's own colour there scaled by 0 to the limit's gain, plus at most its turn times its
        strength across it (model.colour.no_added_tint), so that a grey pixel stays grey. The flow's move
        has its tint taken away at 64 px already; what is drawn after it (the detail stage's redrawing, the
        template's folds, the upsampled controls) can still tint a black-and-white photo. `change` as it is
        without a tint limit, and for a face whose age does not change."""
        if self.tint_limit is None:
            return change
        moved = torch.from_numpy(np.asarray([e.age_before != e.age_after for e in edits])).to(change.device)
        kept = no_added_tint(crops, crops + change, *self.tint_limit) - crops
        return torch.where(moved[:, None, None, None], kept, change)

    def shaped_change(self, crops: torch.Tensor, edits: list[FaceEdit], change: torch.Tensor) -> torch.Tensor:
        """The change (N x 3 x S x S) that gives N work crops their edit's `change` and then their face's
        shape at the age reached (model.age_shape); `change` as it is without an age shape, and for a face
        whose age does not change."""
        if self.age_shape is None:
            return change
        before, after = [e.age_before for e in edits], [e.age_after for e in edits]
        moved = torch.from_numpy(np.asarray(before) != np.asarray(after)).to(change.device)
        warped = self.age_shape.warp(crops + change, before, after)
        return torch.where(moved[:, None, None, None], warped - crops, change)

    def read_detail(self, crops: torch.Tensor, ages=None, targets: list[np.ndarray] = ()) -> WorkDetail:
        """What `fine_detail_change` reads of N crops (N x 3 x S x S in [0, 1]), read once for every age the
        same faces are taken to: the detail the fitted curve rescales (all of the fine detail without a
        detail stage; with one, what is finer than its 128 px), and with a detail stage and the faces'
        `ages`, their 128 px detail encoded under them, redrawn ahead at each array of `targets`."""
        rescaled = None
        if self.fine_detail is not None:
            stage = self.detail_stage
            rescaled = self.fine_detail.detail(crops) if stage is None else finer_than(crops, DETAIL_RESOLUTION)
        if self.detail_stage is None or ages is None:
            return WorkDetail(rescaled)
        latents = self.detail_stage.encode(to_detail_side(crops), ages)
        redrawn = [(np.asarray(t, np.float64), self.detail_stage.redraw(latents, t).to(crops.device)) for t in targets]
        return WorkDetail(rescaled, latents, redrawn)

    def fine_detail_change(
        self, crops: torch.Tensor, edits: list[FaceEdit], detail: WorkDetail | None = None
    ) -> torch.Tensor:
        """The change that takes the fine detail of N crops of the faces' own pixels (N x 3 x S x S in
        [0, 1], finer than the flow's resolution) to each edit's new age; zero where the age does not
        change, and everywhere with neither a detail stage nor a fitted curve. `detail`: the crops'
        `read_detail`, when already at hand.

        Without a detail stage, the fitted curve rescales all of the crops' fine detail (model.fine_detail).
        With one (model.detail), the detail of the crops' 128 px version is redrawn at the new age under
        its own low band; the curve then rescales what the stage does not model (in crops larger than
        128 px, their still finer detail), and for a younger face also the redrawn detail: on the held-out
        faces the stage alone smooths a face less than the judges read as its new age, and a rescale down
        only ever softens. An older face's redrawn detail is not sharpened further (that added detail
        energy, not judged age)."""
        before, after = [e.age_before for e in edits], [e.age_after for e in edits]
        if self.detail_stage is None:
            if self.fine_detail is None:
                return torch.zeros_like(crops)
            return self.fine_detail.change(crops, before, after, None if detail is None else detail.rescaled)
        side = crops.shape[-1]
        change = self.redrawn_detail(crops, before, after, detail)
        if side != DETAIL_RESOLUTION:
            change = F.interpolate(change, size=side, mode="bilinear", align_corners=False)
        if self.fine_detail is None:
            return change
        curve = self.fine_detail
        for i, (b, a) in enumerate(zip(before, after)):
            if a < b:  # the redrawn face's fine detail, softened to the new age
                change[i] += curve.change((crops[i] + change[i])[None], [b], [a])[0]
            elif a > b and side != DETAIL_RESOLUTION:  # the detail finer than the stage's, sharpened
                finest = finer_than(crops[i][None], DETAIL_RESOLUTION) if detail is None else detail.rescaled[i][None]
                change[i] += curve.change(crops[i][None], [b], [a], finest)[0]
        return change

    def redrawn_detail(self, crops: torch.Tensor, before, after, detail: WorkDetail | None = None) -> torch.Tensor:
        """The detail stage's 128 px change of N crops taken from ages `before` to `after`: from `detail`'s
        redrawings where one was drawn at these ages, else drawn here (from its encoding where it has one)."""
        after = np.asarray(after, np.float64)
        change = crops.new_zeros(len(crops), 3, DETAIL_RESOLUTION, DETAIL_RESOLUTION)
        todo = np.asarray(after != np.asarray(before, np.float64))
        if detail is not None:
            for targets, drawn in detail.redrawn:
                hit = np.flatnonzero(todo & (np.abs(targets - after) <= 1e-6))  # the same age, to rounding
                change[hit] = drawn[hit]
                todo[hit] = False
        index = np.flatnonzero(todo)
        if len(index):
            if detail is not None and detail.latents is not None:
                change[index] = self.detail_stage.redraw(detail.latents.subset(index), after[index]).to(change.device)
            else:
                change[index] = self.detail_stage.aged_change(
                    to_detail_side(crops[index]), np.asarray(before, np.float64)[index], after[index]
                )
        return change

    def work_after(self, image: np.ndarray, aligned: AlignedFace, change: torch.Tensor) -> np.ndarray:
        """The aligned face at the work resolution (its work crop, cut from `image` if not yet cut) with
        `change` applied under the paste-back mask."""
        crop = aligned.cut(image, self.work_size)
        after = (crop + change * face_mask(self.work_size, aligned.framing)).clamp(0, 1)
        return after.mul(255).round().byte().permute(1, 2, 0).numpy()

    @torch.no_grad()
    def age_photo(
        self,
        image: np.ndarray,
        years=None,
        target_age=None,
        faces: str = "all",
        limits: EditLimits | None = None,
        photo_pixels: int | None = None,
    ) -> PhotoResult:
        """The photo with every chosen face aged; everything outside the faces stays as it was."""
        return self.age_photo_series(
            image,
            [target_age] if target_age is not None else None,
            years=years,
            faces=faces,
            limits=limits,
            photo_pixels=photo_pixels,
        )[0]

    @torch.no_grad()
    def age_photo_series(
        self,
        image: np.ndarray,
        target_ages=None,
        years=None,
        faces: str = "all",
        limits: EditLimits | None = None,
        photo_pixels: int | None = None,
    ) -> list[PhotoResult]:
        """One result per target age (or one for `years`), sharing detection, alignment and encoding.

        `photo_pixels`: None gives each result at the photo's size; a number, the photo scaled down to at
        most that many pixels (faces are still found and read at full size); 0, no photo, only each face's
        aligned result (`FaceResult.work_after`). Memory stays one result-sized copy per age: faces are
        pasted a strip of rows at a time.
        """
        timings: dict[str, float] = {}
        watch = _Stopwatch(timings)
        steps = [dict(years=years)] if target_ages is None else [dict(target_age=t) for t in target_ages]
        canvas, to_photo = result_canvas(image, photo_pixels)
        scale = 0.0 if canvas is None else canvas.shape[1] / image.shape[1]
        plan = self.plan_faces(image, faces, len(steps), limits, scale)
        aligned = plan.aligned
        watch.lap("detect")
        on_canvas = [AlignedFace(face=a.face, matrix=compose(a.matrix, to_photo), framing=a.framing) for a in aligned]
        crops = stack_crops(aligned, self.resolution)
        # the faces' fine detail is the same for every age of a series: read it once; the detail stage's
        # redrawing at the ages asked for runs beside the edits, on a side thread (model.side_threads)
        detail: WorkDetail | Future | None = None
        if aligned and self.detail_stage is not None:
            work = torch.stack([a.cut(image, self.work_size) for a in aligned])
            asked = [self.targets(plan.reading.ages, **step)[0] for step in steps]
            detail = beside(self.read_detail, work, plan.reading.ages, asked)
        elif self.fine_detail is not None and len(steps) > 1:
            detail = self.read_detail(torch.stack([a.cut(image, self.work_size) for a in aligned]))
        results = []
        for step in steps:
            edits = self.edit(crops, reading=plan.reading, original_bits=plan.bits_per_dim, **step)
            if isinstance(detail, Future):
                detail = detail.result()
            watch.lap("edit")
            out = None if canvas is None else canvas.copy()
            face_results = []
            for a, moved, e, change in zip(aligned, on_canvas, edits, self.work_changes(image, aligned, edits, detail)):
                if out is not None:
                    paste_in_place(out, moved, change)
                face_results.append(
                    FaceResult(
                        aligned=a,
                        age_before=e.age_before,
                        age_after=e.age_after,
                        aligned_after=e.after,
                        work_after=self.work_after(image, a, change) if out is None else None,
                        age_target=e.age_target,
                        clamped=e.clamped,
                        strength=e.strength,
                    )
                )
            watch.lap("paste_back")
            results.append(PhotoResult(image=out, faces=face_results, timings=dict(timings), skipped=plan.skipped))
        return results


def to_detail_side(crops: torch.Tensor) -> torch.Tensor:
    """N x 3 x S x S crops as the detail stage's 128 px faces (area-averaged; as they are at 128 px)."""
    if crops.shape[-1] == DETAIL_RESOLUTION:
        return crops
    return F.interpolate(crops, size=DETAIL_RESOLUTION, mode="area")


def finer_than(crops: torch.Tensor, side: int) -> torch.Tensor:
    """The detail of N x 3 x S x S crops finer than `side` pixels: each less its area-averaged copy at
    `side` pixels, upsampled back by repeating pixels (with S a multiple of `side`, the Haar detail of
    the levels above `side`)."""
    small = F.interpolate(crops, size=side, mode="area")
    return crops - F.interpolate(small, size=crops.shape[-1], mode="nearest")


def usable_faces(aligner: FaceAligner, detected: list[DetectedFace]) -> list[DetectedFace]:
    """The detected faces large enough to edit; NoFaceError or FaceTooSmallError where there are none."""
    if not detected:
        raise NoFaceError(NO_FACE)
    usable = [f for f in detected if not aligner.is_too_small(f)]
    if not usable:
        raise FaceTooSmallError(face_too_small_message(detected[0].size, aligner.min_face_size))
    return usable


def finite_or_inf(bits: np.ndarray) -> np.ndarray:
    """Bits/dim with a face the flow cannot rate (NaN or infinite pixels) counted as infinitely unlikely."""
    return np.where(np.isfinite(bits), bits, np.inf)


def subset_reading(reading: AgeReading, index: np.ndarray) -> AgeReading:
    """The reading of some of the faces (`index`)."""
    pick = torch.from_numpy(np.asarray(index))
    return AgeReading(
        reading.ages[index],
        [reading.genders[i] for i in index],
        [reading.races[i] for i in index],
        [z[pick.to(z.device)] for z in reading.latents],
        [None if c is None else c[pick.to(c.device)] for c in reading.contexts],
    )


def result_canvas(image: np.ndarray, photo_pixels: int | None) -> tuple[np.ndarray | None, np.ndarray]:
    """The image results are pasted into (see `age_photo_series`) and the 2x3 map of its pixels to the
    photo's."""
    height, width = image.shape[:2]
    if photo_pixels == 0:
        return None, np.array([[1.0, 0, 0], [0, 1.0, 0]])
    if photo_pixels is None or height * width <= photo_pixels:
        return image, np.array([[1.0, 0, 0], [0, 1.0, 0]])
    from PIL import Image

    factor = np.sqrt(photo_pixels / (height * width))
    size = (max(1, int(width * factor)), max(1, int(height * factor)))
    canvas = np.asarray(Image.fromarray(image).resize(size, Image.LANCZOS))
    fx, fy = width / size[0], height / size[1]
    return canvas, np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5]])


def compose(matrix: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 affine map `matrix` after `inner`."""
    out = np.empty((2, 3))
    out[:, :2] = matrix[:, :2] @ inner[:, :2]
    out[:, 2] = matrix[:, :2] @ inner[:, 2] + matrix[:, 2]
    return out


def paste_in_place(
    photo: np.ndarray, aligned: AlignedFace, change: torch.Tensor, strip_pixels: int = PASTE_STRIP_PIXELS
) -> None:
    """paste_back into `photo` itself, a strip of rows at a time, so that its float copies stay small."""
    side = change.shape[-1]
    height, width = photo.shape[:2]
    x0, y0, x1, y1 = crop_footprint(invert_affine(scaled(aligned.matrix, side)), side, height, width)
    if x1 <= x0 or y1 <= y0:
        return
    rows = max(1, strip_pixels // (x1 - x0))
    for top in range(y0, y1, rows):
        region = photo[top : top + rows, x0:x1]
        shift = np.array([[1.0, 0, x0], [0, 1.0, top]])
        moved = AlignedFace(face=aligned.face, matrix=compose(aligned.matrix, shift), framing=aligned.framing)
        region[...] = paste_back(region, moved, change)
