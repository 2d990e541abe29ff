"""Align labelled face folders into a training set: `python -m model.prepare SRC [SRC ...] --out data/faces`.

Each SRC holds `images/` and `labels.csv` (file, age, gender[, race]). Every image goes through the same
`FaceAligner` as the service: detection (cached in shards), then the crops of one framing (`--framing`),
cut from the photo's own pixels only: a face whose crop would reach outside the photo or into its black
corners is dropped, never padded. The output folder holds `faces_<side>.npy` (N x side x side x 3 uint8),
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

from model.framing import FRAMINGS

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


def read_rgb(path: str) -> np.ndarray | None:
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except OSError:
        return None


def detect_one(task: tuple[str, float]) -> tuple[str, np.ndarray | None]:
    """Returns ('ok', 5 x 2 landmarks in the photo's pixels) or (reason, None)."""
    path, pad = task
    image = read_rgb(path)
    if image is None:
        return "unreadable", None
    h, w = image.shape[:2]
    p = int(round(pad * max(h, w)))
    # tight crops leave no room around the face for the detector: pad with the border's own colours
    # (for detection only: the crops are cut from the photo's own pixels)
    padded = np.pad(image, ((p, p), (p, p), (0, 0)), mode="edge") if p else image
    # a labelled photo shows one large face: skip the detector's search for small ones
    faces = _aligner.detect(padded, smallest=0.25 * min(h, w))
    if not faces:
        return "no face", None
    if len(faces) > 1 and faces[1].size > 0.5 * faces[0].size:
        return "several faces", None
    return "ok", (faces[0].landmarks - [p, p]).astype(np.float32)


def _dark_run(line: np.ndarray) -> int:
    """How many pixels at the start of `line` (booleans) are dark before the first that is not."""
    return int(np.argmin(line)) if not line.all() else len(line)


def valid_pixels(image: np.ndarray, dark: int = 24, margin: int = 2) -> np.ndarray:
    """H x W bool: False in the black corner triangles that rotating a photo upright leaves, True elsewhere.

    Each corner's triangle is spanned by the dark runs along its two edges, widened by `margin` pixels
    for the JPEG's blur; dark hair inside the photo is never taken for a corner."""
    black = image.max(axis=2) <= dark
    h, w = black.shape
    ys, xs = np.mgrid[0:h, 0:w]
    valid = np.ones((h, w), bool)
    for flip_y in (False, True):
        for flip_x in (False, True):
            corner = black[::-1] if flip_y else black
            corner = corner[:, ::-1] if flip_x else corner
            a, b = _dark_run(corner[0]), _dark_run(corner[:, 0])  # along the top edge, down the side edge
            # dark hair at an edge lengthens a run: shorten the longer one until the triangle is dark within
            for _ in range(12):
                if a == 0 or b == 0 or corner[int(0.4 * b), int(0.4 * a)]:
                    break
                a, b = (int(0.8 * a), b) if a * h > b * w else (a, int(0.8 * b))
            if a == 0 or b == 0:
                continue
            x = (w - 1 - xs) if flip_x else xs
            y = (h - 1 - ys) if flip_y else ys
            valid &= x / (a + margin) + y / (b + margin) >= 1.0
    return valid


def crop_one(task: tuple[str, np.ndarray, tuple[int, ...], str, float]) -> tuple[str, dict[int, np.ndarray] | None]:
    """Returns ('ok', side -> side x side x 3 uint8) or ('crop not covered', None) when any crop pixel
    would come from outside the photo or from its black corners."""
    from model.align import DetectedFace, FaceAligner, crop_coverage, warp_to_crop

    path, landmarks, sides, framing, min_coverage = task
    image = read_rgb(path)
    matrix = FaceAligner.alignment(DetectedFace(np.zeros(4), landmarks.astype(np.float64), 1.0), framing)
    if crop_coverage(valid_pixels(image), matrix, max(sides)) < min_coverage:
        return "crop not covered", None
    return "ok", {
        s: (warp_to_crop(image, matrix, s).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8) for s in sides
    }


def _init_cropper() -> None:
    import torch

    torch.set_num_threads(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=Path("data/faces"))
    parser.add_argument(
        "--detections",
        type=Path,
        default=None,
        help="folder of the detection shards (default: OUT/shards); another framing of the "
        "same sources reuses them without running the detector again",
    )
    parser.add_argument("--framing", default="tight", choices=sorted(FRAMINGS))
    parser.add_argument("--sides", default="64,128", help="crop sides in pixels, comma separated")
    parser.add_argument("--pad", type=float, default=0.4, help="padding around tight crops for the detector")
    parser.add_argument("--tight", default="utkface", help="sources whose name contains this are tight crops")
    parser.add_argument(
        "--min-coverage",
        type=float,
        default=0.95,
        help="drop a face when a crop pixel takes less than this share from the photo itself",
    )
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

    shard_dir = args.detections or args.out / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    n_shards = (len(items) + SHARD - 1) // SHARD
    todo = [i for i in range(n_shards) if not (shard_dir / f"{i:05d}.npz").exists()]
    progress = tqdm(total=len(items), initial=(n_shards - len(todo)) * SHARD, unit="img", desc="detecting")
    if todo:  # a finished run only crops, without starting the detector
        with mp.Pool(args.workers, initializer=_init_worker, initargs=(640,)) as pool:
            for i in todo:
                chunk = items[i * SHARD : (i + 1) * SHARD]
                tasks = [(r["path"], args.pad if args.tight in r["source"] else 0.0) for r in chunk]
                results = pool.map(detect_one, tasks, chunksize=8)
                landmarks = (
                    np.stack([lm if lm is not None else np.full((5, 2), np.nan, np.float32) for _, lm in results])
                    if results
                    else np.zeros((0, 5, 2), np.float32)
                )
                tmp = shard_dir / f"{i:05d}.tmp.npz"
                np.savez(
                    tmp,
                    status=np.array([s for s, _ in results]),
                    files=np.array([r["file"] for r in chunk]),
                    landmarks=landmarks,
                )
                tmp.rename(shard_dir / f"{i:05d}.npz")
                progress.update(len(chunk))
    progress.close()

    detected, dropped = [], {}
    for i in range(n_shards):
        shard = np.load(shard_dir / f"{i:05d}.npz")
        chunk = items[i * SHARD : (i + 1) * SHARD]
        if list(shard["files"]) != [r["file"] for r in chunk]:
            raise SystemExit(f"{shard_dir} holds detections of other sources: remove it or name another --detections")
        for row, status, landmarks in zip(chunk, shard["status"], shard["landmarks"]):
            if status == "ok":
                detected.append((row, landmarks))
            else:
                dropped[str(status)] = dropped.get(str(status), 0) + 1

    args.out.mkdir(parents=True, exist_ok=True)
    kept = []
    stacks = {
        s: np.lib.format.open_memmap(
            args.out / f"faces_{s}.tmp.npy", mode="w+", dtype=np.uint8, shape=(len(detected), s, s, 3)
        )
        for s in sides
    }
    tasks = [(row["path"], landmarks, sides, args.framing, args.min_coverage) for row, landmarks in detected]
    with mp.Pool(args.workers, initializer=_init_cropper) as pool:
        for (row, _), (status, crops) in zip(
            detected, tqdm(pool.imap(crop_one, tasks, chunksize=16), total=len(tasks), unit="img", desc="cropping")
        ):
            if crops is None:
                dropped[status] = dropped.get(status, 0) + 1
                continue
            for s in sides:
                stacks[s][len(kept)] = crops[s]
            kept.append(row)
    for s in sides:  # only the kept rows, in a file of their own size
        np.save(args.out / f"faces_{s}.npy", stacks[s][: len(kept)])
        del stacks[s]
        (args.out / f"faces_{s}.tmp.npy").unlink()
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
        "framing": args.framing,
        "min_coverage": args.min_coverage,
        "heldout_fraction": args.heldout,
        "seed": args.seed,
        "sides": list(sides),
        "per_source": {src: sum(1 for r in kept if r["source"] == src) for src in sorted({r["source"] for r in items})},
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
