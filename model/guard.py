"""The likelihood guard's threshold, chosen on real held-out faces.

An edited face is scaled back (`AgeEditor._guarded`) while the flow finds it less likely than real faces:
more bits/dim than the `percentile` of real held-out aligned faces, or, for a face already beyond that,
more than its original's plus the real faces' spread (that percentile less their median).
`python -m model.guard --weights weights --data data/faces-loose` measures the real faces and writes
`likelihood_guard` into weights/editor.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from model.editor import EDITOR_CONFIG, GUARD_KEY


def heldout_bits(editor, faces, count: int, seed: int = 0, batch: int = 100) -> np.ndarray:
    """Bits/dim of `count` held-out faces (a FaceSet) chosen at random, as the editor measures edited ones."""
    index = np.sort(np.random.default_rng(seed).choice(len(faces), min(count, len(faces)), replace=False))
    return np.concatenate([editor.bits_per_dim(faces.batch(index[i : i + batch])) for i in range(0, len(index), batch)])


def guard_settings(bits: np.ndarray, percentile: float, data: str) -> dict:
    median, limit = float(np.median(bits)), float(np.percentile(bits, percentile))
    return {
        "max_bits_per_dim": round(limit, 4),
        "max_rise_bits_per_dim": round(limit - median, 4),
        "percentile": percentile,
        "heldout_median_bits_per_dim": round(median, 4),
        "heldout_faces": int(len(bits)),
        "data": data,
    }


def main(argv=None) -> None:
    import argparse

    from model.data import load_faces
    from model.editor import AgeEditor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--data", type=Path, default=Path("data/faces-loose"))
    parser.add_argument("--faces", type=int, default=600, help="held-out faces measured")
    parser.add_argument("--percentile", type=float, default=95.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    editor = AgeEditor.from_dir(args.weights)
    heldout = load_faces(args.data, editor.resolution, "heldout")
    settings = guard_settings(heldout_bits(editor, heldout, args.faces), args.percentile, f"{args.data} split heldout")
    path = args.weights / EDITOR_CONFIG
    config = json.loads(path.read_text()) if path.exists() else {}  # read just before writing: shared file
    config[GUARD_KEY] = settings
    path.write_text(json.dumps(config, indent=2) + "\n")
    print(
        f"real held-out faces: median {settings['heldout_median_bits_per_dim']} bits/dim, "
        f"{args.percentile:g}th percentile {settings['max_bits_per_dim']} ({settings['heldout_faces']} faces); "
        f"wrote {GUARD_KEY} into {path}"
    )


if __name__ == "__main__":
    main()
