"""The 128 px detail stage of a training run: held-out bits/dim, cost per face and fine-detail energy.

    python -m bench.detail --run runs/detail-v1 [--initial RUN] [--data data/faces-tight] [--threads 1]

Held-out faces are the 192 and 200 px sources' held-out split, whole faces (not patches). `--initial` is a
run of the same arguments made with `--epochs 0` (the untrained start: ActNorm initialized, nothing else).
Fine-detail energy is the mean square of the three Haar detail bands over the central face (the middle half
of the crop in each direction); the edits change the age only (no 64 px change), so they show what the
detail flow alone does with the target age.

With `--edits-from WEIGHTS`, also under the shipped editor's own edits (+30 and -25 years, its guard on):
each held-out 128 px face's 64 px low band is edited by the main flow, and the 128 px result is made four
ways on the smoothed, upsampled 64 px change (`AgeEditor.work_change` at a 128 px work crop): with the
photo's own fine detail rescaled to the new age by the fitted curve alone (the editor without a detail
stage); with the detail stage as first designed in its place (`DetailStage.change` of the 64 px change, at
the editor's read ages: the low band moved by the change, the detail decoded under the edited low band);
with only that design's redrawn detail added to the smoothed change; and as the service makes it with this
run's stage (`AgeEditor.fine_detail_change`: the detail redrawn at the new age under the face's own low
band, a younger face's then softened by the curve). `--crops FILE` writes six of those faces across the
ages, a row each: the face, then the four results for +30 years and the four for -25.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from app.imaging import tensor_to_image
from bench.common import Table, machine_line, measure, ms, parser_for, print_tables, use_threads
from model.detail import DetailFaces, DetailStage, evaluate_detail_bits_per_dim, load_detail_faces
from model.editor import AgeEditor
from model.flow.detail import haar_merge, haar_split

EDIT_YEARS = (30, -25)
CROP_FACES = 6


def central_detail_energy(faces: torch.Tensor) -> torch.Tensor:
    """Mean square of the detail bands over the middle half of each face: N values."""
    detail = haar_split(faces)[1]
    side = detail.shape[-1]
    centre = detail[:, :, side // 4 : 3 * side // 4, side // 4 : 3 * side // 4]
    return centre.pow(2).flatten(1).mean(1)


def main(argv=None) -> None:
    parser = parser_for(__doc__)
    parser.add_argument("--run", type=Path, default=Path("runs/detail-v1"))
    parser.add_argument("--initial", type=Path, default=None)
    parser.add_argument("--data", type=Path, default=Path("data/faces-tight"))
    parser.add_argument("--limit", type=int, default=0, help="held-out faces (0: all)")
    parser.add_argument("--edits-from", type=Path, default=None, help="the shipped editor's weights folder")
    parser.add_argument(
        "--edit-faces", type=int, default=96, help="held-out faces edited with --edits-from, spread over the split"
    )
    parser.add_argument("--crops", type=Path, default=None, help="with --edits-from: a JPEG of edited crops")
    args = parser.parse_args(argv)
    use_threads(args.threads)
    torch.set_flush_denormal(True)
    heldout = load_detail_faces(args.data, "heldout", limit=args.limit)
    stage = DetailStage.load(args.run)
    tables = []

    likelihood = Table(f"held-out detail bits/dim ({len(heldout)} whole faces, 128 px)", ["model", "bits/dim"])
    if args.initial is not None:
        initial = evaluate_detail_bits_per_dim(DetailStage.load(args.initial), heldout, "cpu")
        likelihood.add("untrained start", f"{initial:.4f}")
    likelihood.add(str(args.run), f"{evaluate_detail_bits_per_dim(stage, heldout, 'cpu'):.4f}")
    tables.append(likelihood)

    face, age = heldout.pixels([0]), heldout.ages[:1]
    no_change = torch.zeros(1, 3, 64, 64)
    cost = measure(lambda: stage.change(face, no_change, age, age + 30), args.repeats)
    timing = Table("cost of DetailStage.change per face (batch of 1)", ["median ms", "p95 ms"], notes=[machine_line()])
    timing.add(ms(cost.median), ms(cost.p(95)))
    tables.append(timing)

    ages = heldout.ages
    energy = torch.cat(
        [central_detail_energy(heldout.pixels(np.arange(i, min(i + 64, len(ages))))) for i in range(0, len(ages), 64)]
    ).numpy()
    old, young = energy[(ages >= 55) & (ages <= 75)], energy[(ages >= 18) & (ages <= 35)]
    detail = Table("central fine-detail energy", ["what", "faces", "median ratio"])
    detail.add(
        "real 55-75 over real 18-35 (medians)", f"{len(old)} / {len(young)}", f"{np.median(old) / np.median(young):.2f}"
    )
    for years, chosen in ((30, (ages >= 18) & (ages <= 45)), (-25, (ages >= 45) & (ages <= 75))):
        idx = np.flatnonzero(chosen)
        ratios = []
        for i in range(0, len(idx), 32):
            batch = idx[i : i + 32]
            faces = heldout.pixels(batch)
            after = stage.edit(faces, torch.zeros(len(batch), 3, 64, 64), ages[batch], ages[batch] + years)
            ratios += (central_detail_energy(after) / central_detail_energy(faces)).tolist()
        detail.add(f"{years:+d} years, age only: after / before", len(idx), f"{statistics.median(ratios):.2f}")
    tables.append(detail)
    if args.edits_from is not None:
        tables.append(under_edits(stage, AgeEditor.from_dir(args.edits_from), heldout, args.edit_faces, args.crops))
    print_tables(tables)


@torch.no_grad()
def under_edits(stage: DetailStage, editor: AgeEditor, faces: DetailFaces, count: int, crops_path) -> Table:
    """Fine-detail energy after / before under the editor's own 64 px edits, the four ways of the module's
    docstring; with `crops_path`, a figure of six of the faces, chosen across the ages."""
    editor.work_size = 128
    index = np.unique(np.linspace(0, len(faces) - 1, min(count, len(faces))).round().astype(int))  # spread out
    shown_faces = index[np.argsort(faces.ages[index], kind="stable")][
        np.linspace(0, len(index) - 1, CROP_FACES).round().astype(int)
    ]
    ways = ["the curve alone", "stage as designed", "its detail on the smooth change", "as shipped with this stage"]
    table = Table(
        f"under the editor's own edits ({len(index)} held-out faces, guard on): central fine-detail energy, "
        "after / before (median)",
        ["edit", *ways],
    )
    columns = [faces.pixels(shown_faces)]
    for years in EDIT_YEARS:
        ratios: list[list[float]] = [[] for _ in ways]
        results = {}
        for start in range(0, len(index), 32):
            batch = index[start : start + 32]
            pixels = faces.pixels(batch)
            edits = editor.edit(haar_split(pixels)[0], years=years)
            changes = torch.stack([e.change for e in edits])
            before, after = [e.age_before for e in edits], [e.age_after for e in edits]
            smooth = torch.stack([editor.work_change(e) for e in edits])
            staged = stage.change(pixels, changes, before, after)
            redrawn = staged - haar_merge(changes, changes.new_zeros(len(batch), 9, 64, 64))  # its detail bands
            editor.detail_stage = None
            curve_alone = editor.fine_detail_change(pixels, edits)
            editor.detail_stage = stage
            made = [
                pixels + smooth + curve_alone,
                pixels + staged,
                pixels + smooth + redrawn,
                pixels + smooth + editor.fine_detail_change(pixels, edits),
            ]
            energy = central_detail_energy(pixels)
            for way, result in zip(ratios, made):
                way += (central_detail_energy(result.clamp(0, 1)) / energy).tolist()
            for i, face in enumerate(batch):
                if face in shown_faces:
                    results[int(face)] = [m[i] for m in made]
        table.add(f"{years:+d} years", *(f"{statistics.median(r):.2f}" for r in ratios))
        for way in range(len(ways)):
            columns.append(torch.stack([results[int(face)][way] for face in shown_faces]))
    if crops_path is not None:
        grid = torch.cat([torch.cat(list(column.clamp(0, 1)), 1) for column in columns], 2)
        crops_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(tensor_to_image(grid)).save(crops_path, quality=92)
    return table


if __name__ == "__main__":
    main()
