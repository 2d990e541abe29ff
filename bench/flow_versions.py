"""Shipped models side by side on the same held-out faces, in one run: the flow issue's table.

    python -m bench.flow_versions --version v1=weights-v1:data/faces-loose --version v2=weights:data/faces-tight \\
        --view-data data/faces-tight --faces 200 --estimator data/bench/age_estimator_tight

Each version is a weights folder and the prepared faces of its framing. Every version edits the same
held-out faces (those all the face sets hold, picked by bench.edit_quality's stratified choice), with the
age trajectory its weights ship (method, level strengths, details as age_trajectory.json says; no
likelihood guard unless --guard), and is judged on the same 128 px crops of --view-data by the same
estimator. Held-out bits/dim is each flow's own, over every held-out face of its framing (editor.json):
flows of different framings model different crops, so it compares training, not the two models.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from bench.edit_quality import OLDER, YOUNGER, build_parser, evaluate
from model.age import TRAJECTORY
from model.editor import EDITOR_CONFIG


def version_args(weights: Path, data: Path, others: list[Path], options: argparse.Namespace) -> argparse.Namespace:
    """bench.edit_quality's arguments for one version: its shipped trajectory, the shared faces and judge."""
    trajectory = json.loads((weights / TRAJECTORY).read_text())
    argv = [
        "--weights",
        str(weights),
        "--data",
        str(data),
        "--view-data",
        str(options.view_data),
        "--method",
        trajectory["method"],
        "--level-strengths",
        ",".join(str(s) for s in trajectory["level_strengths"]),
        "--details",
        trajectory.get("details", "carried"),
        "--faces",
        str(options.faces),
        "--seed",
        str(options.seed),
        "--estimator",
        str(options.estimator),
        "--threads",
        str(options.threads),
        *(["--estimator-epochs", str(options.estimator_epochs)] if options.estimator_epochs else []),
        *(f"--judge={name}" for name in options.judge or []),
        *(["--guard"] if options.guard else []),
        *(["--no-fine-detail"] if options.no_fine_detail else []),
        "--patch-limit",
        options.patch_limit,
        *(["--figures", str(options.figures)] if options.figures else []),
    ]
    if trajectory.get("younger_level_strengths"):
        argv += ["--younger-level-strengths", ",".join(str(s) for s in trajectory["younger_level_strengths"])]
    for other in others:
        argv += ["--faces-from", str(other)]
    return build_parser().parse_args(argv)


def row(label: str, weights: Path, report: dict) -> dict:
    model = json.loads((weights / EDITOR_CONFIG).read_text()).get("model", {})
    older, younger = report["edits"][f"{OLDER:+g} years"], report["edits"][f"{YOUNGER:+g} years"]
    return {
        "version": label,
        "framing": report["config"]["framing"],
        "training_epochs": model.get("training_epochs"),
        "heldout_bits_per_dim": model.get("heldout_bits_per_dim"),
        "heldout_faces": model.get("heldout_faces"),
        "latent_age_error_years": report["latent_age"]["mae"],
        "gender_accuracy": report["latent_age"]["gender_accuracy"],
        "older_read_median": older["read_change"]["median"],
        "younger_read_median": younger["read_change"]["median"],
        "older_same_person": older["identity"]["match_rate"],
        "younger_same_person": younger["identity"]["match_rate"],
        "older_patchy": older["patchy"],
        "younger_patchy": younger["patchy"],
        "reconstruction_same_person": report["edits"]["reconstruction"]["identity"]["match_rate"],
        "faces": report["config"]["faces"],
        "judges": {
            name: {
                "older_read_median": older["judges"][name]["read_change"]["median"],
                "younger_read_median": younger["judges"][name]["read_change"]["median"],
            }
            for name in older.get("judges", {})
        },
    }


def markdown(rows: list[dict]) -> str:
    columns = (
        ("held-out bits/dim (own framing, all held-out faces)", "heldout_bits_per_dim", "{:.3f}"),
        ("training epochs", "training_epochs", "{:.1f}"),
        ("latent age error, years", "latent_age_error_years", "{:.2f}"),
        ("gender accuracy of the reading", "gender_accuracy", "{:.3f}"),
        (f"{OLDER:+g} years: judged change, median", "older_read_median", "{:+.1f}"),
        (f"{YOUNGER:+g} years: judged change, median", "younger_read_median", "{:+.1f}"),
        (f"{OLDER:+g} years: same person", "older_same_person", "{:.0%}"),
        (f"{YOUNGER:+g} years: same person", "younger_same_person", "{:.0%}"),
        (f"{OLDER:+g} years: patchy faces", "older_patchy", "{:.0%}"),
        (f"{YOUNGER:+g} years: patchy faces", "younger_patchy", "{:.0%}"),
    )
    head = "| | " + " | ".join(f"{r['version']} ({r['framing']})" for r in rows) + " |"
    lines = [head, "|---" * (len(rows) + 1) + "|"]
    for title, key, fmt in columns:
        cells = [fmt.format(r[key]) if r[key] is not None else "n/a" for r in rows]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    for name in rows[0].get("judges", {}):
        for edit, key in ((OLDER, "older_read_median"), (YOUNGER, "younger_read_median")):
            cells = [f"{r['judges'][name][key]:+.1f}" if name in r.get("judges", {}) else "n/a" for r in rows]
            lines.append(f"| {edit:+g} years: judge {name}, median | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--version", action="append", required=True, metavar="LABEL=WEIGHTS:DATA", help="a model to compare"
    )
    parser.add_argument(
        "--view-data",
        type=Path,
        required=True,
        help="the crops the judges see: a face set without reflected borders (data/faces-tight), since judges "
        "trained and read on mirror images read every edit weakly",
    )
    parser.add_argument("--faces", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--estimator", type=Path, default=Path("data/bench/age_estimator_tight"))
    parser.add_argument("--estimator-epochs", type=int, default=None, help="as bench.edit_quality's")
    parser.add_argument("--judge", action="append", default=None, help="as bench.edit_quality's")
    parser.add_argument("--guard", action="store_true", help="each version with its likelihood guard")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-fine-detail", action="store_true", help="as bench.edit_quality's")
    parser.add_argument("--patch-limit", default="shipped", help="as bench.edit_quality's")
    parser.add_argument("--out", type=Path, default=None, help="write the rows and the reports as JSON here")
    parser.add_argument(
        "--figures", type=Path, default=None, help="each version's age sweep of held-out faces, as PNGs named by label"
    )
    options = parser.parse_args(argv)
    versions = []
    for text in options.version:
        label, _, rest = text.partition("=")
        weights, _, data = rest.partition(":")
        if not (label and weights and data):
            parser.error(f"--version {text!r}: expected LABEL=WEIGHTS:DATA")
        versions.append((label, Path(weights), Path(data)))
    torch.set_num_threads(options.threads)
    torch.set_flush_denormal(True)
    rows, reports = [], {}
    for label, weights, data in versions:
        others = [d for _, _, d in versions if d != data]
        args = version_args(weights, data, others, options)
        torch.manual_seed(args.seed)
        print(f"{label}: {weights} on {data}", flush=True)
        reports[label] = evaluate(args)
        named = []
        for figure in reports[label]["figures"]:  # the sweeps are named by configuration: add the version
            path = Path(figure)
            target = path.with_name(f"{path.stem}_{label}{path.suffix}")
            path.replace(target)
            named.append(str(target))
        reports[label]["figures"] = named
        rows.append(row(label, weights, reports[label]))
    print()
    print(markdown(rows))
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps({"rows": rows, "reports": reports}, indent=2))
        print(f"report: {options.out}")


if __name__ == "__main__":
    main()
