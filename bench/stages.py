"""Where the time of one request goes, stage by stage, in-process; and the baselines, in the same run.

    python -m bench.stages [--weights weights] [--repeats 10] [--baseline-repeats 3]

Stages: decode the upload, detect, align, encode + read the age, move + decode, paste back, encode the
result, through AgeEditor and app/imaging exactly as the service runs them. Baselines, each measured
interleaved with what it is compared with:

- before and after this benchmark's speed-ups: the detector's networks in the default memory layout (now
  channels-last); facenet-pytorch's own `detect_face`, which area-resampled the whole photo once per pyramid
  level and each candidate box on its own (now `model.detect`, every crop read from one integral image), on
  the copy of the photo detection runs on; the conditional prior's age read and the unconditioned bits/dim,
  which evaluated the prior's density under each of their ~280 and 300 conditions on its own (now one matrix
  product over an age grid crossed with genders and ethnicities, `Glow.condition_grid_log_likelihoods`); the
  whole pipeline with the code before and after; and torch's default threads, one per core (now the cores
  divided among the edits that run at once, `Settings.threads_per_edit`);
- detection on the full-resolution photo against the downscaled copy (`detect_max_side`);
- one face per call against a batch of 8 faces (`AgeEditor.edit`).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from facenet_pytorch.models.utils.detect_face import detect_face

from app.imaging import decode_image, encode_image
from app.service import load_editor
from app.settings import Settings
from bench.common import (
    Samples,
    Table,
    TestPhoto,
    interleaved,
    machine_line,
    ms,
    parser_for,
    print_tables,
    test_photos,
    use_threads,
)
from model.age import AgeReading, ConditionalPriorTrajectory
from model.align import DETECTOR_SMALLEST, FaceAligner, downscaled, paste_back, stack_crops
from model.condition import GENDERS, RACES, condition_grid, condition_vector
from model.detect import mtcnn_detect
from model.editor import AgeEditor, FaceEdit

STAGES = ("decode upload", "detect", "align", "encode + read age", "move + decode", "paste back", "encode result")
YEARS = 20.0


# ---- the code paths before the speed-ups, kept as the measured baseline ------------------------------
def _density_per_condition(flow, latents, contexts, conditions: torch.Tensor) -> torch.Tensor:
    """N x M prior log-densities, each of the M conditions evaluated elementwise on its own."""
    total = 0.0
    for prior, z, ctx in zip(flow.priors, latents, contexts):
        base = prior.context_params(ctx, z.shape[0])[:, None]
        cond = prior.condition_params(conditions)
        params = base + (cond[None] if torch.is_tensor(cond) else cond)
        total = total + prior.log_density(z[:, None], params[:, :, 0::2], params[:, :, 1::2])
    return total


def estimate_per_condition(trajectory: ConditionalPriorTrajectory, faces: torch.Tensor) -> AgeReading:
    """The conditional prior's age reading as it was: 190 coarse conditions, then 90 ages face by face."""
    flow = trajectory.flow
    latents, contexts, _ = flow.flow_forward(faces - 0.5)
    grid, _ = condition_grid(flow.config, trajectory.coarse_ages)
    coarse = _density_per_condition(flow, latents, contexts, grid)
    coarse = coarse.view(len(faces), len(trajectory.coarse_ages), len(GENDERS) * len(RACES))
    best = torch.logsumexp(coarse, 1).argmax(1).tolist()
    genders = [GENDERS[b // len(RACES)] for b in best]
    races = [RACES[b % len(RACES)] for b in best]
    fine_ages = np.arange(trajectory.age_range[0], trajectory.age_range[1] + 0.5, 1.0)
    ages = []
    for i in range(len(faces)):
        cond = condition_vector(flow.config, fine_ages, [genders[i]] * len(fine_ages), [races[i]] * len(fine_ages))
        ll = _density_per_condition(
            flow, [z[i : i + 1] for z in latents], [c if c is None else c[i : i + 1] for c in contexts], cond
        )[0]
        ages.append(float(fine_ages[int(ll.argmax())]))
    return AgeReading(np.array(ages), genders, races, latents, contexts)


def bits_per_dim_per_condition(flow, x01: torch.Tensor) -> torch.Tensor:
    """Bits/dim without a condition (`/v1/likelihood`) as it was: 300 conditions, each on its own."""
    latents, contexts, logdet = flow.flow_forward(flow.quantize(x01))
    grid, _ = condition_grid(flow.config, range(1, 91, 3))
    prior = torch.logsumexp(_density_per_condition(flow, latents, contexts, grid), 1) - math.log(len(grid))
    discretization = -flow.config.dimensions * math.log(2**flow.config.n_bits)
    return -(prior + logdet + discretization) / (flow.config.dimensions * math.log(2.0))


def facenet_detect(mtcnn, image: np.ndarray) -> tuple:
    """facenet-pytorch's own `detect_face` on an H x W x 3 uint8 image: its boxes with scores, its landmarks."""
    return detect_face(
        image, DETECTOR_SMALLEST, mtcnn.pnet, mtcnn.rnet, mtcnn.onet, mtcnn.thresholds, mtcnn.factor, mtcnn.device
    )


def facenet_difference(mtcnn, image: np.ndarray) -> float:
    """The largest difference, in pixels, of model.detect's boxes and landmarks from facenet's `detect_face`'s
    on one image (infinite when they find different numbers of faces)."""
    (expected,), (expected_points,) = facenet_detect(mtcnn, image)
    expected, expected_points = np.asarray(expected, np.float64).reshape(-1, 5), np.asarray(expected_points)
    order = np.argsort((expected[:, 2] - expected[:, 0]) * (expected[:, 3] - expected[:, 1]))[::-1]  # MTCNN.detect's
    boxes, _, points = mtcnn_detect(mtcnn, image, DETECTOR_SMALLEST)
    if len(boxes) != len(expected):
        return math.inf
    shifts = np.abs(boxes - expected[order, :4]), np.abs(points - expected_points[order])
    return float(max(shift.max(initial=0.0) for shift in shifts))


def detector_rows(table: Table, aligner: FaceAligner, photos: list[TestPhoto], repeats: int) -> float:
    """facenet's `detect_face` against model.detect on the copy of each photo detection runs on, interleaved;
    returns the largest difference of their boxes and landmarks, in pixels."""
    mtcnn, shifts = aligner.mtcnn, []
    for photo in photos:
        small, _ = downscaled(photo.rgb, aligner.detect_max_side)
        with torch.inference_mode():
            runs = interleaved(
                {
                    "before": lambda: facenet_detect(mtcnn, small),
                    "after": lambda: mtcnn_detect(mtcnn, small, DETECTOR_SMALLEST),
                },
                repeats,
            )
            shifts.append(facenet_difference(mtcnn, small))
        ratio_row(
            table,
            f"detector: facenet's detect_face vs model.detect, {photo.name} ({small.shape[1]}x{small.shape[0]} copy)",
            runs["before"],
            runs["after"],
            "detect_face",
            "model.detect",
        )
    return max(shifts)


def editor_before(editor: AgeEditor) -> AgeEditor:
    """The same model and settings with the detector's networks in the default memory layout, as before."""
    aligner = FaceAligner(detect_max_side=editor.aligner.detect_max_side, min_face_size=editor.aligner.min_face_size)
    for net in (aligner.mtcnn.pnet, aligner.mtcnn.rnet, aligner.mtcnn.onet):
        net.to(memory_format=torch.contiguous_format)
    return AgeEditor(editor.trajectory, editor.settings, aligner, editor.work_size)


def with_threads(threads: int, fn):
    def run():
        in_use = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(in_use)

    return run


# ---- the pipeline, stage by stage ------------------------------------------------------------------
def run_stages(editor: AgeEditor, photo: TestPhoto, settings: Settings, baseline: bool = False) -> dict:
    """One request's work; returns {stage: (wall seconds, CPU seconds)}. `baseline` reads the age as before
    when the trajectory is the conditional prior (give it `editor_before(editor)` for the old detector)."""
    times = {}
    last = [time.perf_counter(), time.process_time()]

    def lap(stage: str) -> None:
        now = [time.perf_counter(), time.process_time()]
        times[stage] = (now[0] - last[0], now[1] - last[1])
        last[:] = now

    with torch.inference_mode():
        decoded = decode_image(photo.data, settings.max_upload_bytes, settings.max_pixels)
        lap("decode upload")
        faces = editor.find_faces(decoded.rgb)
        lap("detect")
        aligned = editor.align(decoded.rgb, faces)
        crops = stack_crops(aligned, editor.resolution)
        lap("align")
        old_read = baseline and isinstance(editor.trajectory, ConditionalPriorTrajectory)
        reading = estimate_per_condition(editor.trajectory, crops) if old_read else editor.trajectory.estimate(crops)
        lap("encode + read age")
        target = np.clip(reading.ages + YEARS, *editor.age_range)
        after = editor.trajectory.move(crops, reading, target).clamp(0, 1)
        lap("move + decode")
        out = decoded.rgb
        for a, before, aged, age, new_age in zip(aligned, crops, after, reading.ages, target):
            out = paste_back(out, a, editor.work_change(FaceEdit(before, aged, float(age), float(new_age))))
        lap("paste back")
        encode_image(out, "jpeg", decoded.alpha, decoded.icc_profile)
        lap("encode result")
    return times


def stage_table(editor: AgeEditor, photo: TestPhoto, settings: Settings, repeats: int) -> tuple[Table, dict]:
    run_stages(editor, photo, settings)  # warm-up
    per_stage = {stage: Samples() for stage in STAGES}
    totals = Samples()
    for _ in range(repeats):
        times = run_stages(editor, photo, settings)
        for stage, (wall, cpu) in times.items():
            per_stage[stage].wall.append(wall)
            per_stage[stage].cpu.append(cpu)
        totals.wall.append(sum(w for w, _ in times.values()))
        totals.cpu.append(sum(c for _, c in times.values()))
    table = Table(
        f"Stages, in-process: {photo.label}, 1 face, {repeats} runs",
        ["stage", "median ms", "p95 ms", "p99 ms", "CPU ms (median)", "share of CPU"],
    )
    cpu_total = sum(s.cpu_median for s in per_stage.values())
    slowest = max(STAGES, key=lambda s: per_stage[s].cpu_median)
    for stage in STAGES:
        s = per_stage[stage]
        mark = " (slowest)" if stage == slowest else ""
        table.add(
            stage + mark,
            ms(s.median),
            ms(s.p(95)),
            ms(s.p(99)),
            ms(s.cpu_median),
            f"{100 * s.cpu_median / cpu_total:.0f}%",
        )
    table.add("total", ms(totals.median), ms(totals.p(95)), ms(totals.p(99)), ms(totals.cpu_median), "100%")
    return table, {"stages": per_stage, "total": totals, "slowest": slowest}


# ---- baselines -------------------------------------------------------------------------------------
def face_crops(editor: AgeEditor, photo: TestPhoto) -> torch.Tensor:
    """The photo's faces aligned at the flow's resolution, N x 3 x S x S."""
    return stack_crops(editor.align(photo.rgb, editor.find_faces(photo.rgb)), editor.resolution)


def ratio_row(table: Table, name: str, before: Samples, after: Samples, label_before: str, label_after: str):
    table.add(
        name,
        f"{label_before}: {ms(before.median)} ({ms(before.cpu_median)} CPU)",
        f"{label_after}: {ms(after.median)} ({ms(after.cpu_median)} CPU)",
        f"{before.median / after.median:.2f}x",
        f"{before.cpu_median / after.cpu_median:.2f}x",
    )


def speedup_table(editor: AgeEditor, photos: list[TestPhoto], settings: Settings, repeats: int) -> Table:
    """Before and after this benchmark's speed-ups, interleaved in one run."""
    table = Table(
        "Speed-ups: before vs after, measured interleaved in one run (median ms)",
        ["what", "before", "after", "wall ratio", "CPU ratio"],
    )
    before = editor_before(editor)
    for photo in photos:
        with torch.inference_mode():
            runs = interleaved(
                {"before": lambda: before.find_faces(photo.rgb), "after": lambda: editor.find_faces(photo.rgb)}, repeats
            )
        ratio_row(table, f"detect, {photo.name}", runs["before"], runs["after"], "default layout", "channels-last")
    detector_shift = detector_rows(table, editor.aligner, photos, repeats)
    crops = face_crops(editor, photos[0])
    if editor.flow.config.conditional:
        prior = ConditionalPriorTrajectory(editor.flow, age_range=editor.age_range)
        for n in (1, 8):
            faces = crops.repeat(n, 1, 1, 1)
            with torch.inference_mode():
                runs = interleaved(
                    {"before": lambda: estimate_per_condition(prior, faces), "after": lambda: prior.estimate(faces)},
                    max(1, repeats // n),
                )
            ratio_row(
                table,
                f"age read by the conditional prior, {n} face{'s' if n > 1 else ''}",
                runs["before"],
                runs["after"],
                "per condition",
                "grid product",
            )
        with torch.inference_mode():
            runs = interleaved(
                {
                    "before": lambda: bits_per_dim_per_condition(editor.flow, crops),
                    "after": lambda: editor.flow.bits_per_dim(crops),
                },
                repeats,
            )
            ratio_row(
                table,
                "bits/dim without a condition (/v1/likelihood), 1 face",
                runs["before"],
                runs["after"],
                "per condition",
                "grid product",
            )
            ages = estimate_per_condition(prior, crops).ages[0], prior.estimate(crops).ages[0]
            bits = bits_per_dim_per_condition(editor.flow, crops)[0], editor.flow.bits_per_dim(crops)[0]
            same = f"age read {ages[0]:.0f} and {ages[1]:.0f} years; bits/dim {bits[0]:.5f} and {bits[1]:.5f}; "
    else:
        same = ""
    threads, default_threads = torch.get_num_threads(), len(os.sched_getaffinity(0))
    threads_label = f"{threads} thread{'s' if threads > 1 else ''}"
    with torch.inference_mode():
        runs = interleaved(
            {
                "before": with_threads(default_threads, lambda: editor.edit(crops, years=YEARS)),
                "after": lambda: editor.edit(crops, years=YEARS),
            },
            repeats,
        )
    ratio_row(
        table,
        "edit 1 face (AgeEditor.edit): torch threads",
        runs["before"],
        runs["after"],
        f"{default_threads} threads",
        threads_label,
    )
    old_read = isinstance(editor.trajectory, ConditionalPriorTrajectory)
    for photo in photos:
        runs = interleaved(
            {
                "before": lambda: run_stages(before, photo, settings, baseline=True),
                "after": lambda: run_stages(editor, photo, settings),
            },
            repeats,
        )
        ratio_row(table, f"whole pipeline, {photo.name}", runs["before"], runs["after"], "code before", "code after")
    runs = interleaved(
        {
            "before": with_threads(default_threads, lambda: run_stages(editor, photos[0], settings)),
            "after": lambda: run_stages(editor, photos[0], settings),
        },
        repeats,
    )
    ratio_row(
        table,
        f"whole pipeline, {photos[0].name}: torch threads",
        runs["before"],
        runs["after"],
        f"{default_threads} threads",
        threads_label,
    )
    with torch.inference_mode():
        faces_before, faces_after = before.find_faces(photos[0].rgb), editor.find_faces(photos[0].rgb)
    shift = np.abs(faces_before[0].landmarks - faces_after[0].landmarks).max()
    table.notes.append(
        f"Same results before and after: {same}landmarks differ by at most {shift:.5f} px; the detector's "
        f"boxes and landmarks by at most {detector_shift:.5f} px. Whole "
        f"pipeline, code before: the detector in the default layout"
        f"{', the age read per condition' if old_read else ''}; after: as served, with the "
        f"{editor.trajectory.name} age trajectory; both with {threads_label}. Torch threads before: "
        f"torch's default, one per core."
    )
    return table


def baseline_table(editor: AgeEditor, photos: list[TestPhoto], repeats: int) -> Table:
    table = Table("Baselines (median ms)", ["what", "baseline", "as served", "wall ratio", "CPU ratio"])
    full_res = FaceAligner(detect_max_side=10**6, min_face_size=editor.aligner.min_face_size)
    for photo in photos:
        # no warm-up: the stage runs have warmed the detector code, and a full-resolution 12 MP search is slow
        runs = interleaved(
            {"full": lambda: full_res.detect(photo.rgb), "downscaled": lambda: editor.aligner.detect(photo.rgb)},
            repeats,
            warmup=0,
        )
        ratio_row(
            table,
            f"detect, {photo.name}",
            runs["full"],
            runs["downscaled"],
            "full resolution",
            f"max side {editor.aligner.detect_max_side}",
        )
    crops = face_crops(editor, photos[0])
    batch = crops.repeat(8, 1, 1, 1)
    runs = interleaved(
        {
            "one": lambda: [editor.edit(crops, years=YEARS) for _ in range(8)],
            "batch": lambda: editor.edit(batch, years=YEARS),
        },
        repeats,
    )
    ratio_row(table, "edit 8 faces (AgeEditor.edit)", runs["one"], runs["batch"], "8 calls of 1", "1 call of 8")
    table.notes.append(
        f"Per face in a batch of 8: {ms(runs['batch'].median / 8)} ms ({ms(runs['batch'].cpu_median / 8)} CPU)."
    )
    return table


def served_editor(weights: Path) -> AgeEditor:
    """The editor exactly as the service loads it, on the CPU."""
    return load_editor(Settings(weights_dir=weights, device="cpu"))


def stage_tables(
    editor: AgeEditor, photos: list[TestPhoto], repeats: int, baseline_repeats: int
) -> tuple[list[Table], dict]:
    settings = Settings()
    tables, summary = [], {}
    for photo in photos:
        table, figures = stage_table(editor, photo, settings, repeats)
        tables.append(table)
        summary[photo.name] = figures
    tables.append(speedup_table(editor, photos, settings, baseline_repeats))
    tables.append(baseline_table(editor, photos, baseline_repeats))
    return tables, summary


def main() -> None:
    parser = parser_for(__doc__)
    parser.add_argument("--baseline-repeats", type=int, default=3, help="runs of each side of a comparison")
    args = parser.parse_args()
    use_threads(args.threads)
    print(machine_line())
    tables, _ = stage_tables(served_editor(args.weights), test_photos(), args.repeats, args.baseline_repeats)
    print_tables(tables)


if __name__ == "__main__":
    main()
