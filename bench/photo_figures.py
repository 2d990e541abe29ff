"""Real photos through the whole service pipeline: every edited face enlarged, before and after each edit.

    python -m bench.photo_figures --weights weights --out docs/v2/fixtures_faces.png \\
        tests/fixtures/frrepo_two_people.jpg tests/fixtures/skimage_astronaut.png tests/fixtures/fr_obama.jpg

One row per edited face (largest first within each photo), one column for the photo and one per edit; each
cell is the face's box, widened by a quarter on every side, from the whole result photo, so that seams and
anything the paste-back touched outside the face show too. Each edited cell is labelled with the ages the
answer gives and the strength the guard left.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from app.imaging import decode_image
from model.editor import AgeEditor

CELL = 192


def face_cell(image: np.ndarray, box, side: int = CELL) -> Image.Image:
    """The box widened by a quarter on every side, squared, cut from `image` (clipped to it) and resized."""
    x0, y0, x1, y1 = (float(v) for v in box)
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 0.75 * max(x1 - x0, y1 - y0)
    h, w = image.shape[:2]
    left, top = int(max(0, cx - half)), int(max(0, cy - half))
    right, bottom = int(min(w, cx + half)), int(min(h, cy + half))
    return Image.fromarray(image[top:bottom, left:right]).resize((side, side), Image.LANCZOS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("photos", type=Path, nargs="+")
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--years", type=float, nargs="+", default=[-25.0, 30.0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    editor = AgeEditor.from_dir(args.weights)
    rows: list[tuple[str, list[tuple[Image.Image, str]]]] = []
    for path in args.photos:
        image = decode_image(path.read_bytes(), 1 << 30, 1 << 28).rgb
        results = [editor.age_photo(image, years=years) for years in args.years]
        for k, face in enumerate(results[0].faces):
            cells = [(face_cell(image, face.face.box), "photo")]
            for years, result in zip(args.years, results):
                edited = result.faces[k]
                label = f"{years:+g}: {edited.age_before:.0f} -> {edited.age_after:.0f}, strength {edited.strength:.2f}"
                cells.append((face_cell(result.image, face.face.box), label))
            rows.append((f"{path.name} face {k + 1}", cells))
    head, gap = 16, 4
    columns = 1 + len(args.years)
    canvas = Image.new("RGB", (columns * (CELL + gap), len(rows) * (CELL + head + gap)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=11)
    for r, (name, cells) in enumerate(rows):
        top = r * (CELL + head + gap)
        for c, (cell, label) in enumerate(cells):
            left = c * (CELL + gap)
            draw.text((left + 2, top + 2), name if c == 0 else label, fill="black", font=font)
            canvas.paste(cell, (left, top + head))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out, optimize=True)
    print(f"figure: {args.out} ({len(rows)} faces)")


if __name__ == "__main__":
    main()
