"""Copy a training run's model into a weights folder: `python -m model.export --run runs/glow64 --out weights`.

Writes flow.safetensors and flow_config.json (and heads.safetensors where the run trained supervised heads),
and editor.json with what /v1/model reports: the training data and framing, the held-out bits/dim and age
error over every held-out face, the training steps, epochs and time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
from pathlib import Path

import torch

from model.checkpoint import CONFIG, WEIGHTS, load_flow
from model.data import load_faces
from model.editor import EDITOR_CONFIG
from model.evaluation import evaluate_bits_per_dim, evaluate_heads, save_grid
from model.heads import HEADS_FILE, load_heads


def run_summary(run: Path, faces: int | None = None) -> dict:
    """Steps, minutes, epochs (of `faces` training faces) and the last held-out figures of a run's log."""
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    held = [r for r in records if "heldout_bpd" in r]
    steps = [r for r in records if "bpd" in r]
    summary = {
        # The last record may be the final held-out evaluation, logged after the last step's record.
        "training_steps": max((r["step"] for r in records if "step" in r), default=0),
        "training_minutes": round(steps[-1]["elapsed_min"], 1) if steps else 0.0,
    }
    args = json.loads((run / "args.json").read_text()) if (run / "args.json").exists() else {}
    if faces and "batch_size" in args:
        # model.train draws whole batches only (a sampler with drop_last), so an epoch is this many steps
        steps_per_epoch = max(1, faces // int(args["batch_size"]))
        summary["training_epochs"] = round(summary["training_steps"] / steps_per_epoch, 2)
    if held:
        summary["heldout_bits_per_dim"] = round(held[-1]["heldout_bpd"], 4)
        summary["heldout_bits_per_dim_step"] = held[-1]["step"]
    ages = [r for r in records if "heldout_age_mae" in r]
    if ages:
        summary["heldout_age_error_years"] = round(ages[-1]["heldout_age_mae"], 2)
        summary["heldout_gender_accuracy"] = round(ages[-1]["heldout_gender_acc"], 4)
    return summary


def this_machine() -> str:
    cpu = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, no GPU"


def training_faces(data: Path) -> int | None:
    """How many faces of the prepared data set are in the training split (None without labels)."""
    if not (data / "labels.csv").exists():
        return None
    with open(data / "labels.csv", newline="") as f:
        return sum(1 for row in csv.DictReader(f) if row.get("split", "train") == "train")


def heldout_figures_all_faces(flow, data: Path, heads_path: Path | None = None) -> dict:
    """Held-out bits/dim of `flow` over every held-out face (training logs a subset), and with the flow's
    supervised heads, their age error and gender accuracy over every held-out face too."""
    heldout = load_faces(data, flow.config.resolution, "heldout")
    figures = {
        "heldout_bits_per_dim": round(evaluate_bits_per_dim(flow, heldout, "cpu"), 4),
        "heldout_faces": len(heldout),
    }
    if heads_path is not None and heads_path.exists():
        read = evaluate_heads(flow, load_heads(heads_path), heldout, "cpu")
        figures["heldout_age_error_years"] = round(read["heldout_age_mae"], 2)
        figures["heldout_gender_accuracy"] = round(read["heldout_gender_acc"], 4)
    return figures


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run", type=Path, default=Path("runs/glow64"))
    parser.add_argument("--out", type=Path, default=Path("weights"))
    parser.add_argument("--data", type=Path, default=Path("data/faces"))
    parser.add_argument("--hardware", default=this_machine())
    parser.add_argument(
        "--no-eval",
        action="store_true",
        help="skip measuring held-out bits/dim on every held-out face (else: a few minutes)",
    )
    parser.add_argument(
        "--samples",
        type=Path,
        default=None,
        help="also write a grid of 32 samples at temperature 0.7 (seed 0) to this PNG",
    )
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS, CONFIG, HEADS_FILE):
        if name != HEADS_FILE or (args.run / name).exists():
            shutil.copyfile(args.run / name, args.out / name)
    config = json.loads((args.out / CONFIG).read_text())
    report = json.loads((args.data / "report.json").read_text()) if (args.data / "report.json").exists() else {}
    evaluate_all = not args.no_eval and (args.data / "labels.csv").exists()
    flow = None
    if evaluate_all or args.samples:
        torch.set_flush_denormal(True)
        flow = load_flow(args.out)
    faces = training_faces(args.data) or report.get("kept")
    model = {
        "training_data": "UTKFace (64 and 200 px) and All-Age-Faces, aligned by model.prepare; "
        "research and demonstration use only",
        "training_faces": faces,
        **({"framing": report["framing"]} if "framing" in report else {}),
        "bits_per_dim_definition": f"held-out, {config['n_bits']}-bit pixels, Glow's uniform dequantization "
        "(fixed seed), conditioned on each face's labels",
        "hardware": args.hardware,
        **run_summary(args.run, faces),
    }
    if evaluate_all:
        model.update(
            heldout_figures_all_faces(flow, args.data, args.out / HEADS_FILE),
            heldout_bits_per_dim_step=model["training_steps"],
        )
    path = args.out / EDITOR_CONFIG
    settings = json.loads(path.read_text()) if path.exists() else {}
    settings["model"] = model
    path.write_text(json.dumps(settings, indent=2) + "\n")
    print(json.dumps(model, indent=2))
    if args.samples:
        save_grid(flow.sample(32, temperature=0.7, seed=0), args.samples)
        print(f"samples: {args.samples}")


if __name__ == "__main__":
    main()
