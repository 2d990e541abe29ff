"""Align labelled face folders into a training set: `python -m model.prepare SRC [SRC ...] --out data/faces`.

Each SRC holds `images/` and `labels.csv` (file, age, gender[, race]). Every image goes through the same
`FaceAligner` as the service. The output folder holds `faces_<side>.npy` (N x side x side x 3 uint8),
`labels.csv` (with a fixed `split` column: train or heldout) and `report.json` (what was dropped and why).
Work is done in shards that are kept on disk, so an interrupted run resumes where it stopped.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import multiprocessing as mp
import os
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

RACES = ("white", "black", "asian", "indian", "other")
SHARD = 500
_aligner = None


def read_labels(folder: Path) -> list[dict]:
    with open(folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["source"] = folder.name
        row["path"] = str(folder / "images" / row["file"])
        row.setdefault("race", "")
    return rows


def heldout(key: str, fraction: float, seed: int) -> bool:
    """A fixed split: a hash of the seed and the image's name decides, whatever the order or the machine."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def _init_worker(detect_max_side: int) -> None:
    import torch

    from model.align import FaceAligner

    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    global _aligner
    _aligner = FaceAligner(detect_max_side=detect_max_side, min_face_size=24, min_score=0.9)


def align_one(task: tuple[str, tuple[int, ...], float]) -> tuple[str, dict[int, np.ndarray] | None]:
    """Returns ('ok', crops) or (reason, None)."""
    path, sides, pad = task
    try:
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
    except OSError:
        return "unreadable", None
    h, w = image.shape[:2]
    p = int(round(pad * max(h, w)))
    # tight crops leave no room around the face for the detector: pad with the border's own colours
    padded = np.pad(image, ((p, p), (p, p), (0, 0)), mode="edge") if p else image
    # a labelled photo shows one large face: skip the detector's search for small ones
    faces = _aligner.detect(padded, smallest=0.25 * min(h, w))
    if not faces:
        return "no face", None
    if len(faces) > 1 and faces[1].size > 0.5 * faces[0].size:
        return "several faces", None
    face = faces[0]
    face.box = face.box - [p, p, p, p]
    face.landmarks = face.landmarks - [p, p]
    aligned = _aligner.align(image, face, sides)
    crops = {s: (c.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8) for s, c in aligned.crops.items()}
    return "ok", crops


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("data/faces"))
    parser.add_argument("--sides", default="64,128", help="crop sides in pixels, comma separated")
    parser.add_argument("--pad", type=float, default=0.4, help="padding around tight crops, as a fraction")
    parser.add_argument("--tight", default="utkface", help="sources whose name contains this are tight crops")
    parser.add_argument("--heldout", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (for trials)")
    args = parser.parse_args(argv)
    sides = tuple(int(s) for s in args.sides.split(","))

    # the same photo can be in several folders (utkface-200 and utkface-64): the first source named wins
    rows: dict[str, dict] = {}
    for folder in args.sources:
        for row in read_labels(folder):
            key = row["file"]
            if key not in rows:
                rows[key] = row
    items = sorted(rows.values(), key=lambda r: (r["source"], r["file"]))
    if args.limit:
        items = items[: args.limit]

    shard_dir = args.out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    n_shards = (len(items) + SHARD - 1) // SHARD
    todo = [i for i in range(n_shards) if not (shard_dir / f"{i:05d}.npz").exists()]
    progress = tqdm(total=len(items), initial=(n_shards - len(todo)) * SHARD, unit="img", desc="aligning")
    if todo:  # a finished run only merges its shards, without starting the detector
        with mp.Pool(args.workers, initializer=_init_worker, initargs=(640,)) as pool:
            for i in todo:
                chunk = items[i * SHARD : (i + 1) * SHARD]
                tasks = [(r["path"], sides, args.pad if args.tight in r["source"] else 0.0) for r in chunk]
                results = pool.map(align_one, tasks, chunksize=8)
                status = np.array([s for s, _ in results])
                arrays = {
                    f"faces_{s}": np.stack([c[s] for _, c in results if c is not None]) if (status == "ok").any()
                    else np.zeros((0, s, s, 3), np.uint8)
                    for s in sides
                }
                tmp = shard_dir / f"{i:05d}.tmp.npz"
                np.savez(tmp, status=status, **arrays)
                tmp.rename(shard_dir / f"{i:05d}.npz")
                progress.update(len(chunk))
    progress.close()

    kept, dropped = [], {}
    stacks: dict[int, list[np.ndarray]] = {s: [] for s in sides}
    for i in range(n_shards):
        shard = np.load(shard_dir / f"{i:05d}.npz")
        chunk = items[i * SHARD : (i + 1) * SHARD]
        for row, status in zip(chunk, shard["status"]):
            if status == "ok":
                kept.append(row)
            else:
                dropped[str(status)] = dropped.get(str(status), 0) + 1
        for s in sides:
            stacks[s].append(shard[f"faces_{s}"])
    for s in sides:
        np.save(args.out / f"faces_{s}.npy", np.concatenate(stacks[s]))
    with open(args.out / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "file", "source", "age", "gender", "race", "split"])
        for i, row in enumerate(kept):
            split = "heldout" if heldout(row["file"], args.heldout, args.seed) else "train"
            writer.writerow([i, row["file"], row["source"], row["age"], row["gender"], row["race"], split])
    report = {
        "images": len(items),
        "kept": len(kept),
        "dropped": dropped,
        "heldout_fraction": args.heldout,
        "seed": args.seed,
        "sides": list(sides),
        "per_source": {src: sum(1 for r in kept if r["source"] == src) for src in sorted({r["source"] for r in items})},
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
