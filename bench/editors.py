"""The editor under test in bench.edit_quality, built from a weights folder as the service builds it, and its
edits shown as the service shows them: the change applied under the face mask to the 128 px aligned crop."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from bench.judges import save_tensors, to_tensor, train_faces
from model.age import POSTHOC_WEIGHTS, ConditionalPriorTrajectory, PosthocTrajectory
from model.age_fit import fit_posthoc, reduce_rank
from model.age_shape import SHAPE_KEY, AgeShape
from model.age_template import TEMPLATE_KEY, AgeTemplate
from model.align import reframe
from model.checkpoint import WEIGHTS
from model.detail import CONFIG as DETAIL_CONFIG
from model.detail import DetailStage
from model.editor import EDITOR_CONFIG, GUARD_KEY, PATCH_LIMIT_KEY, STRUCTURE_KEY, TINT_KEY, AgeEditor
from model.face_basis import BASIS_KEY, FaceBasis
from model.fine_detail import DETAIL_KEY
from model.flow.glow import Glow
from model.guard import patch_limit_setting, structure_setting, tint_setting
from model.heads import HEADS_FILE, load_heads
from model.masks import face_mask
from model.older_structure import OLDER_KEY, OlderStructure
from model.transport import TransportTrajectory, file_digest, load_transport

METHODS = (ConditionalPriorTrajectory.name, PosthocTrajectory.name, TransportTrajectory.name)
CROP_SIDE = 128
EDIT_BATCH = 16
TARGET_AGES = (5, 15, 30, 50, 70, 85)
TARGET_EDITS = {f"to {t}": dict(target_age=float(t)) for t in TARGET_AGES}


def posthoc_tensors(flow: Glow, weights: Path, data: Path, cache: Path) -> dict[str, torch.Tensor]:
    """The weights folder's post-hoc trajectory, or one fitted on train faces and kept in `cache`."""
    if (weights / POSTHOC_WEIGHTS).exists():
        return load_file(str(weights / POSTHOC_WEIGHTS))
    path = cache / f"age_posthoc-{file_digest(weights / WEIGHTS)}.safetensors"
    if not path.exists():
        train = train_faces(data)
        print(f"fitting the post-hoc trajectory on all {len(train)} train faces into {path}", flush=True)
        tensors = fit_posthoc(flow, train)
        cache.mkdir(parents=True, exist_ok=True)
        save_tensors(tensors, path)
    return load_file(str(path))


def build_editor(
    flow: Glow,
    method: str,
    strengths,
    weights: Path,
    data: Path,
    cache: Path,
    rank: int,
    details: str,
    transport: Path | None = None,
    guard: bool = False,
    reading: str = "heads",
    younger=None,
    fine_detail: bool = True,
    patch_limit: str = "shipped",
    detail_stage: str = "shipped",
    face_basis: str = "shipped",
    age_shape: str = "shipped",
    younger_structure: str = "shipped",
    older_structure: str = "shipped",
    tint: str = "shipped",
) -> AgeEditor:
    """The editor under test; `transport`: the folder of age_transport.* (default `weights`); `guard`: with the
    likelihood guard of weights/editor.json; `reading`: "heads" reads the current age with the flow's
    supervised heads where the weights have them, "fit" always with the post-hoc fit; `fine_detail`: the
    photo's fine detail rescaled to the new age as weights/editor.json says (where it says); `patch_limit`:
    "shipped" (weights/editor.json's, where it has one), "off", or "MAX_DEPARTURE:SIGMA_64[:LINE]";
    `detail_stage`: the 128 px detail flow (model.detail) that redraws the detail at the new age, "shipped"
    (the weights folder's, where it has one), "off", or the folder of a detail stage (a training run's);
    `face_basis`: the basis of real faces' detail that an edit's fine change is projected onto
    (model.face_basis), "shipped" (the weights folder's, where it has one), "off", or a folder's; `age_shape`:
    the warp of the face's shape to the new age (model.age_shape), likewise; `younger_structure`: how an edit
    toward a younger age keeps the face's structure (model.colour.keep_structure), "shipped", "off" or
    "SIGMA:AREA[:MAX[:GROW:DEPTH:GAIN]]"; `older_structure`: the rule that lets an older edit draw new lines
    only where real faces fold (model.older_structure), "shipped", "off" or a folder's; `tint`: the limit on the
    colour an edit adds (AgeEditor.untinted_change), "shipped", "off" or "GAIN[:TURN]"."""
    if method == TransportTrajectory.name:
        tensors = posthoc_tensors(flow, weights, data, cache)
        trajectory = TransportTrajectory(flow, tensors, *load_transport(transport or weights), strengths)
    elif method == PosthocTrajectory.name:
        tensors = posthoc_tensors(flow, weights, data, cache)
        trajectory = PosthocTrajectory(
            flow,
            reduce_rank(tensors, rank) if rank else tensors,
            strengths,
            details=details,
            younger_level_strengths=younger,
        )
    else:
        trajectory = ConditionalPriorTrajectory(flow, strengths)
    shipped = json.loads((weights / EDITOR_CONFIG).read_text()) if (weights / EDITOR_CONFIG).exists() else {}
    settings: dict = {"model": {"framing": shipped.get("model", {}).get("framing", "loose")}}
    if guard:
        settings[GUARD_KEY] = shipped[GUARD_KEY]
    if fine_detail and DETAIL_KEY in shipped:
        settings[DETAIL_KEY] = shipped[DETAIL_KEY]
    chosen_setting(patch_limit, shipped, PATCH_LIMIT_KEY, patch_limit_setting, settings)
    chosen_setting(younger_structure, shipped, STRUCTURE_KEY, structure_setting, settings)
    chosen_setting(tint, shipped, TINT_KEY, tint_setting, settings)
    if reading == "heads" and (weights / HEADS_FILE).exists():
        trajectory.heads = load_heads(weights / HEADS_FILE)
    stage_folder = weights if detail_stage == "shipped" else None if detail_stage == "off" else Path(detail_stage)
    stage = None
    if stage_folder is not None and (stage_folder / DETAIL_CONFIG).exists():
        stage = DetailStage.load(stage_folder)
    elif detail_stage not in ("shipped", "off"):
        raise SystemExit(f"{detail_stage} holds no detail stage ({DETAIL_CONFIG})")
    template = None
    if TEMPLATE_KEY in shipped:  # the weights folder's aging template (model.age_template), where it has one
        settings[TEMPLATE_KEY] = shipped[TEMPLATE_KEY]
        template = AgeTemplate.load(weights, shipped[TEMPLATE_KEY])
    basis = optional_part(face_basis, weights, BASIS_KEY, FaceBasis.load, "face basis", settings)
    shape = optional_part(age_shape, weights, SHAPE_KEY, AgeShape.load, "age shape", settings)
    older = optional_part(older_structure, weights, OLDER_KEY, OlderStructure.load, "older structure", settings)
    # a work crop of 128 px: the edit's change is applied to the 128 px aligned crop as the service does
    return AgeEditor(
        ReadingOnce(trajectory),
        settings,
        work_size=CROP_SIDE,
        detail_stage=stage,
        age_template=template,
        face_basis=basis,
        age_shape=shape,
        older_structure=older,
    )


def chosen_setting(choice: str, shipped: dict, key: str, parse, settings: dict) -> None:
    """Puts editor.json's entry `key` into `settings` as `choice` says: "shipped", the weights folder's (where it
    has one); otherwise `parse(choice)` (a setting, or None for "off": no entry)."""
    if choice == "shipped":
        if key in shipped:
            settings[key] = shipped[key]
    elif (value := parse(choice)) is not None:
        settings[key] = value


def optional_part(choice: str, weights: Path, key: str, load, name: str, settings: dict):
    """An optional part of the editor kept as a file and an editor.json entry `key`: for `choice` "shipped",
    the weights folder's, where it has one; "off", none; else the folder `choice`'s, which must have one. The
    entry is copied into `settings` where one is loaded."""
    if choice == "off":
        return None
    folder = weights if choice == "shipped" else Path(choice)
    config = folder / EDITOR_CONFIG
    entry = json.loads(config.read_text()).get(key) if config.exists() else None
    if entry is None:
        if choice != "shipped":
            raise SystemExit(f"{choice} holds no {name} ({key} in {EDITOR_CONFIG})")
        return None
    settings[key] = entry
    return load(folder, entry)


@torch.no_grad()
def read_genders(editor: AgeEditor, flow: Glow, faces: torch.Tensor, batch: int = 50) -> np.ndarray:
    """The gender the editor's reading gives each face; for a reading without one (a post-hoc fit), the
    conditional prior's most likely gender. An array of "female" / "male" (or "unknown")."""
    out: list[str | None] = []
    for start in range(0, len(faces), batch):
        part = faces[start : start + batch]
        genders = editor.trajectory.estimate(part).genders
        if genders and genders[0] is None and flow.config.conditional:
            genders = ConditionalPriorTrajectory(flow).estimate(part).genders
        out.extend(genders)
    return np.array([g or "unknown" for g in out])


class ReadingOnce:
    """A trajectory that reads the ages of a batch once and reuses that reading for every edit of the same
    batch: the editor reads them on each call, and the conditional prior's reading is the slow part."""

    def __init__(self, trajectory) -> None:
        self.trajectory = trajectory
        self._faces: torch.Tensor | None = None
        self._reading = None

    def __getattr__(self, name: str):
        return getattr(self.trajectory, name)

    def estimate(self, faces: torch.Tensor):
        if faces is not self._faces:
            self._faces, self._reading = faces, self.trajectory.estimate(faces)
        return self._reading


@dataclass
class EditRun:
    after: torch.Tensor  # N x 3 x 64 x 64, the flow's output
    shown: np.ndarray  # N x 128 x 128 x 3 uint8, the change applied to the 128 px crop under the face mask
    age_before: np.ndarray
    age_after: np.ndarray
    strength: np.ndarray  # the share of the asked change applied (below 1: scaled back by the guard)


@torch.no_grad()
def run_edits(
    editor: AgeEditor, faces: torch.Tensor, crops: np.ndarray, steps: dict[str, dict], view: str = "loose"
) -> tuple[dict[str, EditRun], np.ndarray]:
    """Every named edit (keyword arguments of `AgeEditor.edit`) of every face, and the editor's age readings.
    `crops`: the 128 px crops of framing `view` that the judges see; an editor of another framing has its
    change resampled into them."""
    mask, view_mask = face_mask(CROP_SIDE, editor.framing), face_mask(CROP_SIDE, view)
    parts: dict[str, list[EditRun]] = {name: [] for name in steps}
    readings = []
    for start in range(0, len(faces), EDIT_BATCH):
        batch, batch_crops = faces[start : start + EDIT_BATCH], crops[start : start + EDIT_BATCH].astype(np.float32)
        readings.append(editor.estimate_age(batch))
        view_crops = to_tensor(crops[start : start + EDIT_BATCH])
        # the crops' fine detail is the same for every edit of the batch: read it once
        detail = editor.read_detail(view_crops)
        for name, step in steps.items():
            edits = editor.edit(batch, **step)
            change = torch.stack([editor.work_change(e) * mask for e in edits])
            if editor.framing != view:
                change = reframe(change, editor.framing, view, CROP_SIDE)
            # the photo's own fine detail, rescaled to the new age, as the service does on its work crop
            change = change + editor.fine_detail_change(view_crops, edits, detail) * view_mask
            if editor.age_shape is not None:  # and the face's shape at the new age
                if editor.framing != view:
                    raise ValueError(f"the age shape warps {editor.framing} crops, not {view} ones")
                change = editor.shaped_change(view_crops, edits, change) * view_mask
            change = editor.untinted_change(view_crops, edits, change)  # and no tint of its own
            change = change.permute(0, 2, 3, 1).numpy()
            shown = np.clip(np.rint(batch_crops + 255.0 * change), 0, 255).astype(np.uint8)
            parts[name].append(
                EditRun(
                    torch.stack([e.after for e in edits]),
                    shown,
                    np.array([e.age_before for e in edits]),
                    np.array([e.age_after for e in edits]),
                    np.array([e.strength for e in edits]),
                )
            )
    runs = {
        name: EditRun(
            torch.cat([p.after for p in pieces]),
            np.concatenate([p.shown for p in pieces]),
            np.concatenate([p.age_before for p in pieces]),
            np.concatenate([p.age_after for p in pieces]),
            np.concatenate([p.strength for p in pieces]),
        )
        for name, pieces in parts.items()
    }
    return runs, np.concatenate(readings)
