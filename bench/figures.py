"""The age-sweep figures of bench.edit_quality: held-out faces of several ages, genders and ethnicities, each
swept to the target ages as the service shows them, one configuration or two side by side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from bench.editors import CROP_SIDE, TARGET_EDITS, run_edits
from model.data import FaceSet
from model.editor import AgeEditor

# figure rows: (youngest, oldest, gender, ethnicity), relaxed when no held-out face matches
FIGURE_ROWS = (
    (1, 10, "female", "white"),
    (11, 20, "male", "black"),
    (21, 30, "female", "asian"),
    (31, 40, "male", "indian"),
    (41, 50, "female", "black"),
    (51, 60, "male", "white"),
    (61, 75, "female", "indian"),
    (76, 116, "male", "asian"),
)


def figure_faces(faces: FaceSet, seed: int) -> list[int]:
    order = np.random.default_rng(seed).permutation(len(faces))
    chosen: list[int] = []
    for low, high, gender, race in FIGURE_ROWS:
        for strict in (2, 1, 0):  # drop the ethnicity, then the gender, when nobody fits
            match = [
                int(i)
                for i in order
                if low <= faces.ages[i] <= high
                and i not in chosen
                and (strict < 1 or faces.genders[i] == gender)
                and (strict < 2 or faces.races[i] == race)
            ]
            if match:
                chosen.append(match[0])
                break
    return chosen


def sweep_strip(editor: AgeEditor, faces: torch.Tensor, crops: np.ndarray, view: str) -> list[np.ndarray]:
    """For each target age, the faces at that age as the service shows them."""
    runs, _ = run_edits(editor, faces, crops, TARGET_EDITS, view)
    return [run.shown for run in runs.values()]


def grid_image(blocks: list[tuple[str, list[str], list[np.ndarray]]], row_labels: list[str]) -> Image.Image:
    """Blocks of columns side by side, each with a title and column labels; rows are faces."""
    side, gap, head = CROP_SIDE, 8, 36
    n_rows = len(row_labels)
    n_cols = sum(len(columns) for _, columns, _ in blocks)
    canvas = Image.new("RGB", (n_cols * side + gap * (len(blocks) - 1), head + n_rows * side), "white")
    draw = ImageDraw.Draw(canvas)
    title_font, label_font = ImageFont.load_default(size=13), ImageFont.load_default(size=12)
    x = 0
    for title, labels, columns in blocks:
        draw.text((x + 4, 2), title, fill="black", font=title_font)
        for label, column in zip(labels, columns):
            draw.text((x + 4, 19), label, fill="black", font=label_font)
            for row, crop in enumerate(column):
                canvas.paste(Image.fromarray(crop), (x, head + row * side))
            x += side
        x += gap
    for row, label in enumerate(row_labels):
        top = head + row * side
        draw.rectangle((0, top, draw.textlength(label, font=label_font) + 6, top + 15), fill="black")
        draw.text((3, top + 1), label, fill="white", font=label_font)
    return canvas


def write_figures(
    folder: Path, editors: list[tuple[str, AgeEditor]], faces: FaceSet, crops: FaceSet, seed: int, view: str
) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rows = figure_faces(faces, seed)
    faces64, crops128 = faces.batch(rows), crops.images[rows]
    row_labels = [f"{faces.ages[i]:.0f} {faces.genders[i][0].upper()} {faces.races[i] or ''}".strip() for i in rows]
    targets = list(TARGET_EDITS)
    strips = [(label, sweep_strip(editor, faces64, crops128, view)) for label, editor in editors]
    original = ("held-out", ["photo"], [list(crops128)])
    main_label, main_strip = strips[0]
    sweep = grid_image([original, (main_label, targets, main_strip)], row_labels)
    paths = [(folder / f"age_sweep_{slug(main_label)}.png", sweep)]
    if len(strips) > 1:
        other_label, other_strip = strips[1]
        both = grid_image(
            [original, (main_label, targets, main_strip), (other_label, targets, other_strip)], row_labels
        )
        paths.append((folder / f"age_compare_{slug(main_label)}_vs_{slug(other_label)}.png", both))
    for path, image in paths:
        image.save(path, optimize=True)
    return [str(path) for path, _ in paths]


def slug(label: str) -> str:
    return label.replace(" ", "_").replace(",", "-").replace("[", "").replace("]", "")
