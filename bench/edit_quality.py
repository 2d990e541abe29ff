"""Is an age edit good? Figures for one flow and one age trajectory, on held-out faces only.

    python -m bench.edit_quality --weights weights --method conditional_prior --level-strengths 1,1,1 \\
        --faces 200 --out edit_quality.json --figures docs/

Needs the evaluation extras: `pip install -r requirements-eval.txt`. What it measures:

1. Age, read by two independent judges (bench.judges): a strided CNN on 64 px and a residual network on
   128 px crops, each trained on its own half of the train split only, their losses weighted so that rare
   ages count, kept in --estimator and reused while the data set is the same. Their readings of real
   held-out faces per age band are printed. Each selected face is aged by +30 and -25 years (where the
   target stays within 1..90 by its labelled age) and swept to fixed target ages; the table gives the
   median change in each judge's reading (goals: +30 read >= 20 years older, -25 read >= 15 years
   younger), the change the judge reads between real held-out faces the same years apart, and how often
   the judge's gender reading flips.
2. Identity: dlib's face-recognition descriptors of the original vs. the edited face; baselines are the
   unedited reconstruction and pairs of different held-out people of the same gender.
3. Skin tone: the CIELab shift of the cheeks, per ethnicity label.
4. Stability: NaN, black or saturated faces for edits at the ends of the API's range.
5. The editor's own age reading (`estimate_age`) against always guessing the mean training age.

Edited faces are judged the way the service shows them: the edit's change, upsampled as for the work
crop, applied under the face mask to the 128 px aligned crop, and the crop's own fine detail rescaled to
the new age where the weights' editor.json has a fitted curve (--no-fine-detail: kept as it is). The
fine-detail energy of the central face after / before (the finest Haar bands) is reported beside real
held-out 55-75 year-olds' over 18-35 year-olds'. A method of `posthoc` uses the weights
folder's age_posthoc.safetensors, or fits one on train faces and keeps it in --posthoc-dir; --details says
whether its finer levels are carried by their priors (as shipped) or kept and shifted.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from bench.editors import CROP_SIDE, METHODS, TARGET_AGES, TARGET_EDITS, build_editor, read_genders, run_edits
from bench.figures import write_figures
from bench.judges import (
    JUDGES,
    calibration,
    data_fingerprint,
    judge,
    load_or_train_judge,
    reading_curve,
    train_mean_age,
)
from bench.measures import (
    PATCH_SHARE,
    FaceDescriptors,
    broken,
    different_people,
    fine_detail_ratio,
    grain,
    identity,
    patch_shares,
    real_fine_detail,
    skin_colour,
)
from model.age import ConditionalPriorTrajectory, PosthocTrajectory
from model.checkpoint import WEIGHTS, load_flow
from model.data import load_faces
from model.transport import TransportTrajectory, file_digest, subset

OLDER, YOUNGER = 30.0, -25.0
OLDER_GOAL, YOUNGER_GOAL = 20.0, -15.0
RANGE_ENDS = {
    "years -40": dict(years=-40.0),
    "years +50": dict(years=50.0),
    "to age 1": dict(target_age=1.0),
    "to age 90": dict(target_age=90.0),
}


def stratified(ages: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n indices spread evenly over age decades (80 and over in one), taken in turn from each decade."""
    rng = np.random.default_rng(seed)
    decades = np.minimum(ages // 10, 8).astype(int)
    pools = [list(rng.permutation(np.flatnonzero(decades == d))) for d in np.unique(decades)]
    chosen: list[int] = []
    while len(chosen) < min(n, len(ages)):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop(0)))
    return np.sort(np.array(chosen, np.int64))


def data_framing(data: Path) -> str:
    """The framing a prepared face set was cut in (its report.json; loose when it does not say)."""
    report = data / "report.json"
    return str(json.loads(report.read_text()).get("framing", "loose")) if report.exists() else "loose"


def strengths_arg(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


def config_label(method: str, strengths, details: str) -> str:
    carried = " carried" if method == PosthocTrajectory.name and details == "carried" else ""
    return f"{method}{carried} [{','.join(f'{s:g}' for s in strengths)}]"


def summary(values: np.ndarray) -> dict:
    return {
        "mean": float(np.mean(values)),
        "median": float(np.median(values)),
        "p10": float(np.percentile(values, 10)),
        "p90": float(np.percentile(values, 90)),
    }


def evaluate(args: argparse.Namespace) -> dict:
    timings: dict[str, float] = {}
    clock, cpu_start = [time.perf_counter()], time.process_time()

    def lap(stage: str) -> None:
        now = time.perf_counter()
        timings[stage] = round(now - clock[0], 1)
        clock[0] = now

    # the judges see the crops of --view-data (default --data); the editor reads its own framing's crops of
    # the same photos
    view_data = args.view_data or args.data
    view = data_framing(view_data)
    judges = {
        name: load_or_train_judge(name, args.estimator, view_data, args.estimator_epochs)
        for name in (args.judge or JUDGES)
    }
    first = next(iter(judges))
    heldout, heldout128 = load_faces(args.data, 64, "heldout"), load_faces(view_data, CROP_SIDE, "heldout")
    view64 = heldout if view_data == args.data else load_faces(view_data, 64, "heldout")
    if view_data != args.data or args.faces_from:
        # the photos both face sets hold (and --faces-from's held-out split too), in the order of their names,
        # so that runs on flows of different framings edit the same faces
        position = {name: i for i, name in enumerate(view64.files)}
        wanted = set(position)
        for folder in args.faces_from:
            wanted &= set(load_faces(folder, 64, "heldout").files)
        shared = np.array(
            sorted(
                (i for i, name in enumerate(heldout.files) if name in position and name in wanted),
                key=lambda i: heldout.files[i],
            ),
            np.int64,
        )
        in_view = np.array([position[heldout.files[i]] for i in shared], np.int64)
        heldout, view64, heldout128 = subset(heldout, shared), subset(view64, in_view), subset(heldout128, in_view)
    mean_age = train_mean_age(args.data)
    all_readings = {name: judge(model, heldout128.images) for name, (model, _) in judges.items()}
    all_ages, all_female = all_readings[first]
    is_female = np.array([g == "female" for g in heldout.genders])
    lap("estimator")

    flow = load_flow(args.weights)
    strengths = args.level_strengths or [1.0] * len(flow.priors)
    editor = build_editor(
        flow,
        args.method,
        strengths,
        args.weights,
        args.data,
        args.posthoc_dir,
        args.rank,
        args.details,
        args.transport,
        args.guard,
        args.reading,
        args.younger_level_strengths,
        not args.no_fine_detail,
        args.patch_limit,
        args.detail_stage,
        args.face_basis,
        args.age_shape,
        args.younger_structure,
        args.older_structure,
        args.tint,
    )
    lap("editor")

    chosen = stratified(heldout.ages, args.faces, args.seed)
    faces = heldout.batch(chosen)
    crops = heldout128.images[chosen]
    ages = heldout.ages[chosen].astype(np.float64)
    genders = [heldout.genders[i] for i in chosen]
    groups = [heldout.races[i] or "unlabelled" for i in chosen]

    readings_before = {name: judge(model, crops) for name, (model, _) in judges.items()}
    read_before, female_before = readings_before[first]
    bits_before = editor.bits_per_dim(faces)
    describe = FaceDescriptors(view)
    descriptors_before = describe(crops)
    colour_before = skin_colour(crops, view)
    firsts, seconds = different_people(genders, args.seed)
    lap("originals")

    shift_edits = (
        ("reconstruction", 0.0, np.ones(len(chosen), bool)),
        (f"{OLDER:+g} years", OLDER, ages + OLDER <= 90),
        (f"{YOUNGER:+g} years", YOUNGER, ages + YOUNGER >= 1),
    )
    steps = {name: dict(years=years) for name, years, _ in shift_edits}
    steps.update(TARGET_EDITS)
    steps.update(RANGE_ENDS)
    runs, latent_ages = run_edits(editor, faces, crops, steps, view)
    latent_female = read_genders(editor, flow, faces) == "female"
    lap("edits")

    edits: dict[str, dict] = {}
    colour: dict[str, dict] = {}
    for name, years, eligible in shift_edits:
        idx = np.flatnonzero(eligible)
        if not len(idx):
            edits[name] = {"faces": 0}
            continue
        shown = runs[name].shown[idx]
        by_judge = {}
        for judge_name, (model, _) in judges.items():
            read_after, female_after = judge(model, shown)
            before_ages, before_female = readings_before[judge_name]
            change = read_after - before_ages[idx]
            verdict = {
                "read_change": summary(change),
                "gender_flips": float(np.mean((female_after > 0.5) != (before_female[idx] > 0.5))),
            }
            if years:
                # the same change of age in real faces: the judge's reading of real held-out faces at the
                # labelled age + years, less its reading at the labelled age
                real = reading_curve(heldout.ages, all_readings[judge_name][0])
                verdict["real_faces_change"] = float(np.mean(real(ages[idx] + years) - real(ages[idx])))
                goal = OLDER_GOAL if years > 0 else YOUNGER_GOAL
                verdict["goal"] = goal
                reached = change >= goal if goal > 0 else change <= goal
                middle = float(np.median(change))
                verdict["goal_met"] = bool(middle >= goal if goal > 0 else middle <= goal)
                verdict["share_reaching_goal"] = float(np.mean(reached))
            by_judge[judge_name] = verdict
        row = {
            "faces": len(idx),
            "asked": float(np.mean(runs[name].age_after[idx] - runs[name].age_before[idx])),
            **by_judge[first],
            "judges": by_judge,
            "identity": identity(descriptors_before[idx], describe(shown)),
            "grain": grain(runs[name].after[idx] - faces[idx], editor.framing),
            "fine_detail_ratio": summary(fine_detail_ratio(crops[idx], shown, view)),
        }
        shares = patch_shares(crops[idx], shown, view)
        bits = editor.bits_per_dim(runs[name].after[idx])
        row.update(
            patchy=float(np.mean(shares > PATCH_SHARE)),
            patch_share=summary(shares),
            bits_per_dim=summary(bits),
            bits_rise=summary(bits - bits_before[idx]),
            strength=float(np.mean(runs[name].strength[idx])),
            scaled_back=float(np.mean(runs[name].strength[idx] < 1)),
        )
        edits[name] = row
        shift = skin_colour(shown, view) - colour_before[idx]
        colour[name] = {
            group: {
                "faces": int(np.sum(members)),
                "dL": float(shift[members, 0].mean()),
                "da": float(shift[members, 1].mean()),
                "db": float(shift[members, 2].mean()),
            }
            for group in sorted(set(groups))
            for members in [np.array([groups[i] == group for i in idx])]
            if members.any()
        }

    sweep = {}
    for target in TARGET_AGES:
        read_after, female_after = judge(judges[first][0], runs[f"to {target}"].shown)
        sweep[f"to {target}"] = {
            "faces": len(chosen),
            "read_age": summary(read_after),
            "read_error": float(np.mean(np.abs(read_after - target))),
            "gender_flips": float(np.mean((female_after > 0.5) != (female_before > 0.5))),
        }
    stability = {"originals": broken(faces), **{name: broken(runs[name].after) for name in RANGE_ENDS}}
    lap("judging")

    estimators = {
        name: {
            **meta,
            "folder": str(args.estimator),
            "heldout_mae": float(np.mean(np.abs(all_readings[name][0] - heldout.ages))),
            "mean_guess_mae": float(np.mean(np.abs(mean_age - heldout.ages))),
            "gender_accuracy": float(np.mean((all_readings[name][1] > 0.5) == is_female)),
            "calibration": calibration(heldout.ages.astype(np.float64), all_readings[name][0]),
            "selected_mae": float(np.mean(np.abs(readings_before[name][0] - ages))),
            "selected_mean_guess_mae": float(np.mean(np.abs(mean_age - ages))),
        }
        for name, (_, meta) in judges.items()
    }
    label = config_label(args.method, strengths, args.details) + (" guarded" if args.guard else "")
    if editor.fine_detail is not None:
        label += " fine detail"
    if editor.detail_stage is not None:
        label += " detail stage"
    if editor.face_basis is not None:
        label += f" basis {editor.face_basis.components.shape[0]}"
    if editor.patch_limit is not None:
        label += " patches {:g}-{:g}".format(*editor.patch_limit)
    if editor.line_limit is not None:
        label += f" lines {editor.line_limit:g}"
    if editor.age_template is not None:
        label += f" template {editor.age_template.older:g}-{editor.age_template.younger:g}"
        if editor.age_template.relative_to is not None:
            label += f" relative {editor.age_template.relative_to:g}"
    if editor.age_shape is not None:
        label += f" shape {editor.age_shape.gain:g}"
    if editor.younger_structure is not None:
        label += " younger structure " + "-".join(f"{v:g}" for v in editor.younger_structure)
    if editor.older_structure is not None:
        label += " older structure"
    if editor.tint_limit is not None:
        label += " tint " + "-".join(f"{v:g}" for v in editor.tint_limit)
    if args.younger_level_strengths:
        label += f" younger [{','.join(f'{s:g}' for s in args.younger_level_strengths)}]"
    figures = []
    if args.figures:
        editors = [(label, editor)]
        if args.compare:
            method, _, text = args.compare.partition(":")
            other = strengths_arg(text) if text else strengths
            editors.append(
                (
                    config_label(method, other, args.details),
                    build_editor(flow, method, other, args.weights, args.data, args.posthoc_dir, 0, args.details),
                )
            )
        figures = write_figures(args.figures, editors, heldout, heldout128, args.seed, view)
        lap("figures")

    return {
        "config": {
            "weights": str(args.weights),
            "flow_sha256": file_digest(args.weights / WEIGHTS),
            "flow": json.loads(flow.config.to_json()),
            "method": args.method,
            "rank": args.rank,
            "details": args.details,
            "guard": args.guard,
            "fine_detail": editor.fine_detail is not None,
            "detail_stage": None
            if editor.detail_stage is None
            else {"folder": args.detail_stage, **editor.detail_stage.info()},
            "patch_limit": editor.patch_limit,
            "line_limit": editor.line_limit,
            "face_basis": editor.settings.get("face_basis"),
            "age_shape": editor.settings.get("age_shape"),
            "younger_structure": editor.settings.get("younger_structure"),
            "older_structure": editor.settings.get("older_structure"),
            "tint_limit": editor.settings.get("tint_limit"),
            "transport": str(args.transport or args.weights) if args.method == TransportTrajectory.name else None,
            "level_strengths": strengths,
            "younger_level_strengths": args.younger_level_strengths,
            "data": str(args.data),
            "view_data": str(view_data),
            "view_framing": view,
            "faces_from": [str(folder) for folder in args.faces_from],
            "framing": editor.framing,
            "reading": args.reading,
            "data_sha256": data_fingerprint(args.data),
            "seed": args.seed,
            "heldout_faces": len(heldout),
            "faces": len(chosen),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
        },
        "estimator": estimators[first],
        "estimators": estimators,
        "latent_age": {
            "faces": len(chosen),
            "mae": float(np.mean(np.abs(latent_ages - ages))),
            "gender_accuracy": float(np.mean(latent_female == np.array([g == "female" for g in genders]))),
            "mean_guess_mae": float(np.mean(np.abs(mean_age - ages))),
            "train_mean_age": mean_age,
        },
        "edits": edits,
        "different_people": identity(descriptors_before[firsts], descriptors_before[seconds]),
        "real_bits_per_dim": summary(bits_before) | {"p95": float(np.percentile(bits_before, 95))},
        "real_fine_detail": real_fine_detail(heldout128, view),
        "target_sweep": sweep,
        "skin_colour": colour,
        "stability": stability,
        "figures": figures,
        "seconds": timings,
        "cpu_seconds": round(time.process_time() - cpu_start, 1),
    }


def print_report(report: dict) -> None:
    c, e, lat = report["config"], report["estimator"], report["latent_age"]
    flow = c["flow"]
    print(
        f"\nedit quality: {c['weights']} (flow {c['flow_sha256']}: {flow['levels']} levels x {flow['steps']} "
        f"steps, width {flow['width']}), "
        f"{config_label(c['method'], c['level_strengths'], c.get('details', 'kept'))}"
    )
    print(
        f"{c['faces']} of {c['heldout_faces']} held-out faces, stratified by decade, seed {c['seed']}; "
        f"cores {c['cores']}, torch threads {c['torch_threads']}"
    )
    for name, e in report.get("estimators", {"estimator": e}).items():
        print(
            f"judge {name:<10} held-out MAE {e['heldout_mae']:5.1f} y (mean guess {e['mean_guess_mae']:5.1f} y), "
            f"on the selected 128 px crops {e['selected_mae']:5.1f} y "
            f"(mean guess {e['selected_mean_guess_mae']:5.1f} y), gender accuracy {e['gender_accuracy']:.3f}"
            + (f"; trained on {e['train_faces']} faces (half {e['half']})" if "half" in e else "")
        )
        if "calibration" in e:
            cal = e["calibration"]
            print(
                f"  reads real held-out faces (slope {cal['slope']:.2f} y per labelled year): "
                + ", ".join(f"{band} -> {row['read']:.0f}" for band, row in cal["bands"].items())
            )
    print(
        f"latent age      estimate_age MAE {lat['mae']:5.1f} y (mean guess {lat['mean_guess_mae']:5.1f} y) "
        f"on the selected faces"
    )
    print(
        f"\n{'edit':<16}{'faces':>6}{'asked':>8}{'read median':>13}{'p10..p90':>14}{'goal':>7}{'met':>5}"
        f"{'reach':>7}{'gender flip':>12}{'id dist':>9}{'match':>7}{'real faces':>12}{'grain':>8}"
    )
    for name, row in report["edits"].items():
        if not row["faces"]:
            print(f"{name:<16}{0:>6}")
            continue
        rc = row["read_change"]
        goal = f"{row['goal']:+.0f}" if "goal" in row else ""
        met = ("yes" if row["goal_met"] else "no") if "goal" in row else ""
        reach = f"{row['share_reaching_goal']:.2f}" if "goal" in row else ""
        print(
            f"{name:<16}{row['faces']:>6}{row['asked']:>+8.1f}{rc['median']:>+13.1f}"
            f"{rc['p10']:>+7.1f}..{rc['p90']:>+5.1f}{goal:>7}{met:>5}{reach:>7}{row['gender_flips']:>12.2f}"
            f"{row['identity']['distance']:>9.3f}{row['identity']['match_rate']:>7.2f}"
            + (f"{row['real_faces_change']:>+12.1f}" if "real_faces_change" in row else "")
            + (f"{row['grain']:>8.4f}" if "grain" in row else "")
        )
    print("real faces: how much the judge's reading of real held-out faces changes over the same years")
    for name, row in report["edits"].items():
        for judge_name, verdict in list(row.get("judges", {}).items())[1:]:
            if "goal" in verdict:
                rc = verdict["read_change"]
                print(
                    f"  judge {judge_name}: {name} read {rc['median']:+.1f} (median; p10..p90 {rc['p10']:+.1f}.."
                    f"{rc['p90']:+.1f}), goal {verdict['goal']:+.0f} {'met' if verdict['goal_met'] else 'not met'}, "
                    f"real faces {verdict['real_faces_change']:+.1f}, gender flips {verdict['gender_flips']:.2f}"
                )
    if "real_fine_detail" in report:
        fine = report["real_fine_detail"]
        print(
            "fine-detail energy of the central face, after / before (median): "
            + ", ".join(
                f"{name} {row['fine_detail_ratio']['median']:.2f}"
                for name, row in report["edits"].items()
                if row["faces"] and "fine_detail_ratio" in row
            )
            + f"; real 55-75 over 18-35: {fine['ratio']:.2f} ({fine['old_faces']} / {fine['young_faces']} faces)"
        )
    people = report["different_people"]
    print(f"{'different people':<16}{people['pairs']:>6}{'':>66}{people['distance']:>9.3f}{people['match_rate']:>7.2f}")
    real = report["real_bits_per_dim"]
    print(
        f"\n{'edit':<16}{'patchy':>8}{'patch share p90':>17}{'bits/dim median':>17}{'rise median':>13}"
        f"{'strength':>10}{'scaled back':>13}   (real faces: median {real['median']:.3f}, p95 {real['p95']:.3f})"
    )
    for name, row in report["edits"].items():
        if row["faces"]:
            print(
                f"{name:<16}{row['patchy']:>8.2f}{row['patch_share']['p90']:>17.3f}"
                f"{row['bits_per_dim']['median']:>17.3f}{row['bits_rise']['median']:>+13.3f}"
                f"{row['strength']:>10.2f}{row['scaled_back']:>13.2f}"
            )
    print(f"\n{'target':<10}{'read age':>9}{'p10..p90':>14}{'|read - target|':>17}{'gender flip':>12}")
    for name, row in report["target_sweep"].items():
        ra = row["read_age"]
        print(
            f"{name:<10}{ra['mean']:>9.1f}{ra['p10']:>7.1f}..{ra['p90']:>5.1f}{row['read_error']:>17.1f}"
            f"{row['gender_flips']:>12.2f}"
        )
    print("\ncheek colour shift, dL* (da*, db*) per ethnicity label")
    names = list(report["skin_colour"])
    groups = sorted({g for per in report["skin_colour"].values() for g in per})
    print(f"{'group':<12}" + "".join(f"{n:>26}" for n in names))
    for group in groups:
        cells = []
        for name in names:
            s = report["skin_colour"][name].get(group)
            cells.append(f"{s['dL']:+6.2f} ({s['da']:+5.2f},{s['db']:+5.2f}) n={s['faces']:<3d}" if s else "")
        print(f"{group:<12}" + "".join(f"{cell:>26}" for cell in cells))
    print(f"\n{'stability':<12}{'faces':>6}{'nan':>6}{'black':>7}{'saturated':>11}")
    for name, row in report["stability"].items():
        print(f"{name:<12}{row['faces']:>6}{row['nan']:>6}{row['black']:>7}{row['saturated']:>11}")
    print(
        "\nseconds: "
        + ", ".join(f"{k} {v:.0f}" for k, v in report["seconds"].items())
        + f"; {report['cpu_seconds']:.0f} s of CPU time in all"
    )
    for path in report["figures"]:
        print(f"figure: {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=Path("weights"), help="flow.safetensors + flow_config.json")
    parser.add_argument("--data", type=Path, default=Path("data/faces"), help="written by `python -m model.prepare`")
    parser.add_argument(
        "--view-data",
        type=Path,
        default=None,
        help="the prepared faces whose 128 px crops the judges see (default --data); the edit of each face is "
        "resampled into them, so that flows of different framings are judged on the same crops of the same faces",
    )
    parser.add_argument(
        "--faces-from",
        type=Path,
        action="append",
        default=[],
        help="edit only held-out faces that this prepared face set holds too (to compare flows on the same "
        "faces); may be given more than once",
    )
    parser.add_argument(
        "--reading",
        choices=("heads", "fit"),
        default="heads",
        help="read the current age with the flow's supervised heads where it has them, or with the post-hoc fit",
    )
    parser.add_argument("--method", choices=METHODS, default=ConditionalPriorTrajectory.name)
    parser.add_argument(
        "--level-strengths",
        type=strengths_arg,
        default=None,
        help="how far each level moves, finest first, e.g. 1,1,1 (default: all 1)",
    )
    parser.add_argument(
        "--younger-level-strengths",
        type=strengths_arg,
        default=None,
        help="post-hoc only: the level strengths of edits to a younger age (default: --level-strengths)",
    )
    parser.add_argument("--faces", type=int, default=200, help="held-out faces to edit, stratified by decade")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    parser.add_argument("--figures", type=Path, default=None, help="write the age sweep PNGs into this folder")
    parser.add_argument(
        "--compare",
        default=None,
        metavar="METHOD[:STRENGTHS]",
        help="a second configuration for the side-by-side figure, e.g. posthoc:1,1,0.5",
    )
    parser.add_argument("--seed", type=int, default=0, help="chooses the faces")
    parser.add_argument(
        "--rank", type=int, default=0, help="post-hoc only: keep this many directions of the age path (0: as stored)"
    )
    parser.add_argument(
        "--details",
        choices=PosthocTrajectory.DETAILS,
        default="carried",
        help="post-hoc only: finer levels kept plus their shift, or carried by their priors",
    )
    parser.add_argument(
        "--estimator",
        type=Path,
        default=Path("data/bench/age_estimator_tight"),
        help="where the judges are kept (bench.judges; trained there when missing or made on other data)",
    )
    parser.add_argument(
        "--estimator-epochs", type=int, default=None, help="epochs of every judge (default: each its own)"
    )
    parser.add_argument(
        "--judge", choices=sorted(JUDGES), action="append", default=None, help="judge with these only (default: all)"
    )
    parser.add_argument(
        "--posthoc-dir",
        type=Path,
        default=Path("runs/posthoc"),
        help="where a post-hoc trajectory fitted here is kept, one file per flow",
    )
    parser.add_argument(
        "--transport", type=Path, default=None, help="transport only: the folder of age_transport.* (default --weights)"
    )
    parser.add_argument(
        "--guard", action="store_true", help="with the likelihood guard of --weights/editor.json (edits scaled back)"
    )
    parser.add_argument(
        "--no-fine-detail",
        action="store_true",
        help="keep the photo's fine detail as it is (default: rescaled to the new age where --weights/editor.json "
        "has a fitted curve, as the service does)",
    )
    parser.add_argument(
        "--detail-stage",
        default="shipped",
        metavar="shipped|off|DIR",
        help="the 128 px detail flow that redraws the detail at the new age (model.detail): --weights' (where it "
        "has one, as the service does), none (the fitted curve rescales the photo's own detail), or a folder's",
    )
    parser.add_argument(
        "--patch-limit",
        default="shipped",
        metavar="shipped|off|MAX:SIGMA[:LINE]",
        help="the limit on the edit's patches and lines (model.colour.limit_patches): --weights/editor.json's, "
        "none, or its largest departure of the blurred change (RGB, 0-1), the blur (pixels of a 64 px crop) "
        "and the largest departure of the change itself",
    )
    parser.add_argument(
        "--face-basis",
        default="shipped",
        metavar="shipped|off|DIR",
        help="the basis of real faces' detail that an edit's fine change is projected onto (model.face_basis): "
        "--weights' (where it has one, as the service does), none, or a folder's",
    )
    parser.add_argument(
        "--age-shape",
        default="shipped",
        metavar="shipped|off|DIR",
        help="the warp of the face's shape to the new age (model.age_shape): --weights' (where it has one, as "
        "the service does), none, or a folder's",
    )
    parser.add_argument(
        "--younger-structure",
        default="shipped",
        metavar="shipped|off|SIGMA:AREA[:MAX[:GROW:DEPTH:GAIN]]",
        help="how an edit toward a younger age keeps the face's own structure (model.colour.keep_structure): "
        "--weights/editor.json's, none, or its broad blur and softening area (pixels of a 64 px crop), largest "
        "softening, and how far (whole pixels), from how deep a feature and by how much of its depth the face's "
        "own features may grow",
    )
    parser.add_argument(
        "--older-structure",
        default="shipped",
        metavar="shipped|off|DIR",
        help="the rule that lets an edit toward an older age draw new lines only where real faces of that age "
        "fold (model.older_structure): --weights' (where it has one), none, or a folder's",
    )
    parser.add_argument(
        "--tint",
        default="shipped",
        metavar="shipped|off|GAIN[:TURN]",
        help="the limit on the colour an edit adds (AgeEditor.untinted_change): --weights/editor.json's, none, or "
        "the most it may scale each pixel's own colour and add across it (a share of its strength)",
    )
    parser.add_argument("--threads", type=int, default=1)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.compare and args.compare.partition(":")[0] not in METHODS:
        parser.error(f"--compare: the method must be one of {', '.join(METHODS)}")
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    report = evaluate(args)
    print_report(report)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
        print(f"report: {args.out}")


if __name__ == "__main__":
    main()
