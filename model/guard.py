"""The likelihood guard's threshold and the plausibility range of faces, chosen on real held-out faces.

An edited face is scaled back (`AgeEditor._guarded`) while the flow finds it less likely than real faces:
more exact bits/dim (`Glow.exact_bits_per_dim`, the density at the face's own pixel values, which the
decoding of an edit gives in the same pass) than the `percentile` of real held-out aligned faces, or, for a
face already beyond that, more than its original's plus the real faces' spread (that percentile less their
median), or while its colour change is blotched over more than `max_blotch_share` of the central face
(`model.colour.blotch_shares`). A detection is edited only when its crop's exact bits/dim lie within
PLAUSIBLE_RANGE times the real faces' mean (`plausible_face_bits_per_dim`). `python -m model.guard
--weights weights --data data/faces-tight` measures the real faces and writes both into weights/editor.json,
with the editor's limit on broad patches (`patch_limit`, `model.colour.limit_patches`; `--patch-limit`) and its
rule for edits toward a younger age (`younger_structure`, `model.colour.keep_structure`; `--younger-structure`). The
percentile is 95 by default; the shipped weights use `--percentile 99` (docs/EVALUATION.md, eighth session).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from model.colour import BLOTCH_SHARE
from model.editor import EDITOR_CONFIG, GUARD_KEY, PATCH_LIMIT_KEY, PLAUSIBLE_BITS_KEY, STRUCTURE_KEY, TINT_KEY

# a detection is rated a face between these multiples of real held-out faces' mean exact bits/dim: wide on
# both sides, since real photos differ from the training crops (light, blur, compression): the faces of the
# photos in tests/fixtures measure 0.95 to 2.3 times that mean with the shipped model
PLAUSIBLE_RANGE = (0.35, 3.5)


def heldout_bits(editor, faces, count: int, seed: int = 0, batch: int = 100) -> np.ndarray:
    """Bits/dim of `count` held-out faces (a FaceSet) chosen at random, as the editor measures edited ones."""
    index = np.sort(np.random.default_rng(seed).choice(len(faces), min(count, len(faces)), replace=False))
    parts = [editor.exact_bits_per_dim(faces.batch(index[i : i + batch])) for i in range(0, len(index), batch)]
    return np.concatenate(parts)


def guard_settings(bits: np.ndarray, percentile: float, data: str, blotch_share: float | None = None) -> dict:
    median, limit = float(np.median(bits)), float(np.percentile(bits, percentile))
    blotch = {} if blotch_share is None else {"max_blotch_share": blotch_share}
    return {
        "max_bits_per_dim": round(limit, 4),
        "max_rise_bits_per_dim": round(limit - median, 4),
        **blotch,
        "percentile": percentile,
        "heldout_median_bits_per_dim": round(median, 4),
        "heldout_faces": int(len(bits)),
        "measure": "exact bits/dim (Glow.exact_bits_per_dim)",
        "data": data,
    }


def plausible_range(bits: np.ndarray) -> list[float]:
    mean = float(np.mean(bits))
    return [round(PLAUSIBLE_RANGE[0] * mean, 3), round(PLAUSIBLE_RANGE[1] * mean, 3)]


# the shipped limit on broad patches: the blurred change departs from its median over the skin by at most
# 0.15 (RGB length) at a blur of 1 pixel of the 64 px crop (chosen in docs/EVALUATION.md, fourth session)
PATCH_LIMIT = "0.15:1.0"
# the shipped rule for edits toward a younger age (model.colour.keep_structure): the change's broad part below a
# 3 px blur, a softening of the face's detail over 2 px, and the face's own features (deeper than 0.1) grown by
# up to 2 px (chosen in docs/EVALUATION.md, tenth session)
YOUNGER_STRUCTURE = "3:2:1:2:0.1:1"
# the shipped tint limit: an edit's finished colour at each pixel is at most twice the photo's own there, along
# it, plus at most half its strength across it (AgeEditor.untinted_change; docs/EVALUATION.md, twelfth session)
TINT_LIMIT = "2:0.5"


def colon_numbers(text: str) -> list[float] | None:
    """`A:B:...` -> its numbers (none where one is not a number); `off` -> None."""
    if text == "off":
        return None
    try:
        return [float(v) for v in text.split(":")]
    except ValueError:
        return []


def patch_limit_setting(text: str) -> dict | None:
    """`MAX:SIGMA` or `MAX:SIGMA:LINE` -> editor.json's `patch_limit` entry; `off` -> None (no limit)."""
    values = colon_numbers(text)
    if values is None:
        return None
    if len(values) not in (2, 3):
        raise ValueError(
            f"a patch limit is MAX:SIGMA or MAX:SIGMA:LINE (for example {PATCH_LIMIT}) or off, not {text!r}"
        )
    if not all(0 < v < float("inf") for v in values):
        raise ValueError(f"a patch limit's departures and blur must be positive numbers, not {text!r}")
    setting = {"max_departure": values[0], "sigma_64": values[1]}
    return setting | ({"max_line_departure": values[2]} if len(values) == 3 else {})


def tint_setting(text: str) -> dict | None:
    """`GAIN[:TURN]` -> editor.json's `tint_limit` entry (AgeEditor.untinted_change: the most an edit may
    scale each pixel's own colour, and the most colour it may add across it, as a share of its strength);
    `off` -> None (the colour as drawn)."""
    values = colon_numbers(text)
    if values is None:
        return None
    valid = len(values) in (1, 2) and 0 < values[0] < float("inf") and all(0 <= v < float("inf") for v in values)
    if not valid:
        raise ValueError(
            f"a tint limit is GAIN or GAIN:TURN, a positive gain and a turn of 0 or more (for example "
            f"{TINT_LIMIT}), or off, not {text!r}"
        )
    return {"max_gain": values[0], "max_turn": values[1] if len(values) == 2 else 0.0}


def structure_setting(text: str) -> dict | None:
    """`SIGMA:AREA[:MAX[:GROW:DEPTH:GAIN]]` -> editor.json's `younger_structure` entry (model.colour.keep_structure:
    the broad blur and the softening's area, pixels of a 64 px crop, the largest softening, and how far, from
    how deep a feature and by how much of its depth the face's own features may grow); `off` -> None."""
    values = colon_numbers(text)
    if values is None:
        return None
    # every value positive and finite, but the feature depth, which may be 0 (every feature grows); the reach is
    # whole pixels
    valid = (
        len(values) in (2, 3, 6)
        and all(0 < v < float("inf") or (i == 4 and v == 0) for i, v in enumerate(values))
        and (len(values) < 6 or values[3] == int(values[3]))
    )
    if not valid:
        raise ValueError(
            "a younger structure is SIGMA:AREA, SIGMA:AREA:MAX or SIGMA:AREA:MAX:GROW:DEPTH:GAIN of positive "
            f"numbers (GROW whole pixels), or off, not {text!r}"
        )
    setting = {
        "sigma_64": values[0],
        "area_sigma_64": values[1],
        "max_softening": values[2] if len(values) > 2 else 1.0,
    }
    if len(values) == 6:
        setting |= {"grow_64": int(values[3]), "feature_depth": values[4], "max_growth": values[5]}
    return setting


def main(argv=None) -> None:
    import argparse

    from model.data import load_faces
    from model.editor import AgeEditor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights"))
    parser.add_argument("--data", type=Path, default=Path("data/faces-loose"))
    parser.add_argument("--faces", type=int, default=600, help="held-out faces measured")
    parser.add_argument("--percentile", type=float, default=95.0)
    parser.add_argument(
        "--blotch-share",
        type=float,
        default=BLOTCH_SHARE,
        help="share of the central face an edit may blotch before it is scaled back (negative: no blotch limit)",
    )
    parser.add_argument(
        "--patch-limit",
        default=PATCH_LIMIT,
        help="the editor's limit on broad patches and lines, MAX:SIGMA[:LINE] (RGB departures of the blurred "
        "change and of the change itself, blur in 64 px pixels), or off",
    )
    parser.add_argument(
        "--younger-structure",
        default=YOUNGER_STRUCTURE,
        help="how an edit toward a younger age keeps the face's own structure, SIGMA:AREA[:MAX[:GROW:DEPTH:GAIN]] "
        "(model.colour.keep_structure; blurs and reach in 64 px pixels), or off",
    )
    parser.add_argument(
        "--tint-limit",
        default=TINT_LIMIT,
        help="GAIN[:TURN]: the most an edit may scale each pixel's own colour, and add across it (a share of its "
        "strength), so that it adds no tint of its own (AgeEditor.untinted_change), or off",
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        patch_limit = patch_limit_setting(args.patch_limit)
        structure = structure_setting(args.younger_structure)
        tint = tint_setting(args.tint_limit)
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    editor = AgeEditor.from_dir(args.weights)
    heldout = load_faces(args.data, editor.resolution, "heldout")
    bits = heldout_bits(editor, heldout, args.faces)
    blotch = args.blotch_share if args.blotch_share >= 0 else None
    settings = guard_settings(bits, args.percentile, f"{args.data} split heldout", blotch)
    path = args.weights / EDITOR_CONFIG
    config = json.loads(path.read_text()) if path.exists() else {}  # read just before writing: shared file
    config[GUARD_KEY] = settings
    config[PLAUSIBLE_BITS_KEY] = plausible_range(bits)
    if patch_limit is None:
        config.pop(PATCH_LIMIT_KEY, None)
    else:
        config[PATCH_LIMIT_KEY] = patch_limit
    if structure is None:
        config.pop(STRUCTURE_KEY, None)
    else:
        config[STRUCTURE_KEY] = structure
    if tint is None:
        config.pop(TINT_KEY, None)
    else:
        config[TINT_KEY] = tint
    path.write_text(json.dumps(config, indent=2) + "\n")
    print(
        f"real held-out faces: median {settings['heldout_median_bits_per_dim']} exact bits/dim, "
        f"{args.percentile:g}th percentile {settings['max_bits_per_dim']}, mean {np.mean(bits):.4f} "
        f"({settings['heldout_faces']} faces); wrote {GUARD_KEY} and {PLAUSIBLE_BITS_KEY} "
        f"{config[PLAUSIBLE_BITS_KEY]} into {path}"
    )


if __name__ == "__main__":
    main()
