"""The 128 px detail stage of a training run: held-out bits/dim, cost per face and fine-detail energy.

    python -m bench.detail --run runs/detail-v1 [--initial RUN] [--data data/faces-tight] [--threads 1]

Held-out faces are the 192 and 200 px sources' held-out split, whole faces (not patches). `--initial` is a
run of the same arguments made with `--epochs 0` (the untrained start: ActNorm initialized, nothing else).
Fine-detail energy is the mean square of the three Haar detail bands over the central face (the middle half
of the crop in each direction); the edits change the age only (no 64 px change), so they show what the
detail flow alone does with the target age.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import torch

from bench.common import Table, machine_line, measure, ms, parser_for, print_tables, use_threads
from model.detail import DetailStage, evaluate_detail_bits_per_dim, load_detail_faces
from model.flow.detail import haar_split


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
    print_tables(tables)


if __name__ == "__main__":
    main()
