"""The 128 px detail stage: the Haar split, patch training on real faces (resumable, learning that
generalizes), and the edit the editor calls (a zero edit changes nothing)."""

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from model import train_detail
from model.align import warp_to_crop
from model.detail import DetailStage, evaluate_detail_bits_per_dim, load_detail_faces, padded_context, patch_batch
from model.flow.detail import DetailConfig, haar_merge, haar_split
from tests.model.test_training import FACES, jittered

COPIES = 12
TINY = [
    "--steps",
    "1,2",
    "--width",
    "16",
    "--encoder-width",
    "8",
    "--features",
    "8",
    "--patch",
    "16",
    "--device",
    "cpu",
    "--threads",
    "1",
    "--checkpoint-every",
    "100000",
    "--eval-every",
    "0",
]


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory, photo, aligner):
    """`model.prepare`'s format: COPIES jittered 64 and 128 px crops of each real face as a 192 px source,
    and one more copy of each labelled as the upsampled 64 px source, which the detail stage must skip."""
    folder = tmp_path_factory.mktemp("detail-faces")
    rng = np.random.default_rng(0)
    crops = {64: [], 128: []}
    rows = []
    for number, (name, which, age, gender, race) in enumerate(FACES):
        image = photo(name)
        matrix = aligner.alignment(aligner.detect(image)[which])
        split = "heldout" if number == len(FACES) - 1 else "train"
        for copy in range(COPIES + 1):
            m = matrix if copy == 0 else jittered(matrix, rng)
            for side in crops:
                crop = warp_to_crop(image, m, side)
                crops[side].append((crop.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))
            source = "utkface-64" if copy == COPIES else "aaf-192"
            rows.append([len(rows), f"{number}_{copy}.jpg", source, age, gender, race, split])
    for side, stack in crops.items():
        np.save(folder / f"faces_{side}.npy", np.stack(stack))
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "file", "source", "age", "gender", "race", "split"])
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def trained_run(face_folder, tmp_path_factory):
    """A tiny detail flow trained for 80 steps on patches of the training faces, and its untrained start."""
    runs = tmp_path_factory.mktemp("detail-runs")
    common = ["--data", str(face_folder), *TINY, "--batch-size", "8", "--lr", "3e-3", "--warmup", "10"]
    train_detail.main([*common, "--run", str(runs / "initial"), "--epochs", "0"])
    train_detail.main([*common, "--run", str(runs / "trained"), "--max-steps", "80"])
    return runs


def test_low_band_is_the_2x2_average_the_main_flow_sees():
    x = torch.rand(2, 3, 16, 16)
    low, detail = haar_split(x)
    assert detail.shape == (2, 9, 8, 8)
    torch.testing.assert_close(low, F.avg_pool2d(x, 2), atol=1e-7, rtol=0)


def test_haar_split_is_exactly_invertible_on_8_bit_pixels():
    x = torch.randint(0, 256, (2, 3, 16, 16)).float() / 256.0
    assert torch.equal(haar_merge(*haar_split(x)), x)


def test_haar_split_is_invertible_to_float_precision_on_any_image():
    x = torch.rand(2, 3, 16, 16)
    assert (haar_merge(*haar_split(x)) - x).abs().max() < 1e-6


def test_prepared_64_px_face_is_the_low_band_of_the_128_px_face_to_within_a_grey_level(face_folder):
    faces_64 = np.load(face_folder / "faces_64.npy").astype(np.float64)
    faces_128 = np.load(face_folder / "faces_128.npy").astype(np.float64)
    low = faces_128.reshape(-1, 64, 2, 64, 2, 3).mean(axis=(2, 4))
    assert np.abs(low - faces_64).mean() < 1.0  # grey levels of 255: the two crops frame the same face


def test_detail_faces_are_the_192_and_200_px_sources_only(face_folder):
    train = load_detail_faces(face_folder, "train")
    heldout = load_detail_faces(face_folder, "heldout")
    assert (len(train), len(heldout)) == ((len(FACES) - 1) * COPIES, COPIES)
    assert train.images.shape[1:] == (128, 128, 3)
    assert heldout.ages[0] == FACES[-1][2]


def test_encoder_features_of_a_patch_are_the_crop_of_the_whole_faces_features():
    torch.manual_seed(0)
    stage = DetailStage.new(DetailConfig(steps=(1, 1, 1), width=8, encoder_width=8, features=4))
    for p in stage.flow.encoder.parameters():
        p.data.normal_(0, 0.3)
    low = torch.rand(1, 3, 64, 64)
    context, m = padded_context(low, stage.margin), stage.margin
    condition = stage.condition([30.0], "cpu")
    whole = stage.flow.features(context, condition)
    y, x, side = 8, 20, 16  # offsets on the coarsest level's grid (multiples of 4)
    patch = stage.flow.features(context[:, :, y : y + side + 2 * m, x : x + side + 2 * m], condition)
    for level, (a, b) in enumerate(zip(patch, whole)):
        s = 2**level
        torch.testing.assert_close(a, b[:, :, y // s : (y + side) // s, x // s : (x + side) // s], atol=1e-5, rtol=1e-5)
        shifted = b[:, :, y // s + 1 : (y + side) // s + 1, x // s : (x + side) // s]
        assert (a - shifted).abs().max() > 1e-2  # a window one row off is not the same


def test_patches_are_windows_of_the_faces_detail_with_their_context(face_folder):
    faces = load_detail_faces(face_folder, "train")
    stage = DetailStage.new(DetailConfig(steps=(1, 1), width=8, encoder_width=8, features=4))
    detail, context, ages = patch_batch(stage, faces, [0, 5], 16, torch.Generator().manual_seed(1), "cpu")
    m = stage.margin
    assert detail.shape == (2, 9, 16, 16) and context.shape == (2, 3, 16 + 2 * m, 16 + 2 * m)
    assert np.array_equal(ages, faces.ages[[0, 5]])
    # the context window is the low band over the same pixels as the detail: their merge is a real face crop
    face = haar_merge(context[:, :, m:-m, m:-m] + 0.5, detail)
    assert -1e-6 <= face.min() and face.max() <= 1.0 + 1e-6 and face.std() > 0.05


def test_short_training_on_patches_lowers_heldout_detail_bits_per_dim(face_folder, trained_run):
    heldout = load_detail_faces(face_folder, "heldout")
    before = evaluate_detail_bits_per_dim(DetailStage.load(trained_run / "initial"), heldout, "cpu")
    after = evaluate_detail_bits_per_dim(DetailStage.load(trained_run / "trained"), heldout, "cpu")
    assert math.isfinite(before) and math.isfinite(after)
    assert after < before - 0.3, (before, after)
    logged = [json.loads(line) for line in (trained_run / "trained" / "log.jsonl").read_text().splitlines()]
    held = [r["heldout_bpd"] for r in logged if "heldout_bpd" in r]
    assert held[0] == pytest.approx(before, abs=1e-4)  # the log's first figure is the untrained model's


def test_resumed_detail_training_ends_with_the_weights_of_an_uninterrupted_run(face_folder, tmp_path):
    common = ["--data", str(face_folder), *TINY, "--batch-size", "4", "--warmup", "3", "--eval-limit", "2"]
    train_detail.main([*common, "--run", str(tmp_path / "straight"), "--max-steps", "20"])
    train_detail.main([*common, "--run", str(tmp_path / "resumed"), "--max-steps", "7"])
    train_detail.main([*common, "--run", str(tmp_path / "resumed"), "--max-steps", "20", "--resume"])
    straight = load_file(str(tmp_path / "straight" / "detail.safetensors"))
    resumed = load_file(str(tmp_path / "resumed" / "detail.safetensors"))
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(resumed[name], straight[name]), name
    state = torch.load(tmp_path / "resumed" / "train_state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["position"]) == (20, 1, 5)  # 15 steps per epoch


def test_training_with_fewer_faces_than_a_batch_stops_with_a_message(face_folder, tmp_path):
    with pytest.raises(SystemExit, match="fewer than one batch"):
        train_detail.main(
            ["--data", str(face_folder), *TINY, "--batch-size", "8", "--train-limit", "5", "--run", str(tmp_path)]
        )


def heldout_faces(face_folder, n: int = 2) -> tuple[torch.Tensor, np.ndarray]:
    faces = load_detail_faces(face_folder, "heldout")
    return faces.pixels(np.arange(n)), faces.ages[:n]


def test_zero_edit_returns_the_face_bit_identical(face_folder, trained_run):
    stage = DetailStage.load(trained_run / "trained")
    faces, ages = heldout_faces(face_folder)
    change = stage.change(faces, torch.zeros(2, 3, 64, 64), ages, ages)
    assert torch.equal(change, torch.zeros_like(faces))
    assert torch.equal(stage.edit(faces, torch.zeros(2, 3, 64, 64), ages, ages), faces)


def test_edit_moves_the_low_band_by_the_main_flows_change_and_redraws_the_detail(face_folder, trained_run):
    stage = DetailStage.load(trained_run / "trained")
    faces, ages = heldout_faces(face_folder)
    low_change = 0.05 * torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    after = stage.edit(faces, low_change, ages, ages + 30)
    low_before, detail_before = haar_split(faces)
    low_after, detail_after = haar_split(after)
    torch.testing.assert_close(low_after - low_before, low_change, atol=1e-5, rtol=0)
    assert (detail_after - detail_before).abs().mean() > 1e-4
    # the target age alone changes the detail too
    older = stage.change(faces, torch.zeros(2, 3, 64, 64), ages, ages + 30)
    assert older.abs().max() > 1e-4
    torch.testing.assert_close(haar_split(older)[0], torch.zeros(2, 3, 64, 64), atol=1e-6, rtol=0)


def test_standardized_detail_decodes_back_to_the_detail_of_a_whole_face(face_folder, trained_run):
    stage = DetailStage.load(trained_run / "trained")
    faces, ages = heldout_faces(face_folder)
    low, detail = haar_split(faces)
    context, condition = padded_context(low, stage.margin), stage.condition(ages, "cpu")
    with torch.no_grad():
        eps = stage.flow.standardize(detail, context, condition)
        back = stage.flow.generate(eps, context, condition)
    assert eps.shape == (2, 36, 32, 32)
    assert (back - detail).abs().max() < 1e-5


def test_saved_stage_loads_with_the_same_likelihood(face_folder, trained_run, tmp_path):
    stage = DetailStage.load(trained_run / "trained")
    stage.save(tmp_path)
    faces, ages = heldout_faces(face_folder)
    with torch.no_grad():
        torch.testing.assert_close(
            DetailStage.load(tmp_path).bits_per_dim(faces, ages), stage.bits_per_dim(faces, ages), atol=0, rtol=0
        )


def test_a_flow_with_the_age_in_its_prior_rates_every_age_in_one_pass_as_one_pass_per_age_would():
    torch.manual_seed(0)
    stage = DetailStage.new(
        DetailConfig(steps=(1, 2), width=8, encoder_width=8, features=4, condition_in="prior", scale_bound=1.0)
    )
    with torch.no_grad():
        for p in stage.flow.parameters():  # away from the zero start, so that the age matters
            p.add_(0.05 * torch.randn_like(p))
    low, detail = haar_split(torch.rand(3, 3, 32, 32))
    context, ages = padded_context(low, stage.margin), np.array([3.0, 40.0, 80.0])
    with torch.no_grad():
        log_p, age_nats = stage.log_prob_and_age_nats(detail, context, ages)
        at_knots = torch.stack([stage.log_prob(detail, context, np.full(3, k)) for k in stage.age_knots], 1)
    torch.testing.assert_close(log_p, stage.log_prob(detail, context, ages), atol=1e-3, rtol=1e-6)
    weights = stage.condition(ages, "cpu")
    torch.testing.assert_close(age_nats, -(weights * torch.log_softmax(at_knots, 1)).sum(1), atol=1e-3, rtol=1e-5)
    assert (at_knots.max(1).values - at_knots.min(1).values).min() > 1e-3  # the ages are told apart


def test_the_age_cross_entropy_needs_the_age_in_the_prior(face_folder, tmp_path):
    with pytest.raises(SystemExit, match="enters the prior"):
        train_detail.main(["--data", str(face_folder), *TINY, "--age-weight", "0.1", "--run", str(tmp_path)])


def test_training_with_the_age_in_the_prior_learns_the_ages_and_the_edit_follows_the_target_age(face_folder, tmp_path):
    # the faces' copies relabelled with ages far apart, one per person, so that the ages can be learned
    folder = tmp_path / "faces"
    folder.mkdir()
    for side in (64, 128):
        (folder / f"faces_{side}.npy").write_bytes((face_folder / f"faces_{side}.npy").read_bytes())
    with open(face_folder / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["age"] = str((3, 20, 45, 70, 90, 30)[int(row["file"].split("_")[0])])
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    common = ["--data", str(folder), *TINY, "--batch-size", "8", "--lr", "3e-3", "--warmup", "10"]
    prior = ["--condition-in", "prior", "--scale-bound", "1.0", "--age-weight", "0.05", "--max-steps", "150"]
    train_detail.main([*common, *prior, "--run", str(tmp_path / "run")])
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    nats = [r["age_nats"] for r in logged if "age_nats" in r]
    assert len(nats) == 3 and nats[-1] < math.log(12) - 0.5, nats  # below a guess over the 12 age knots
    stage = DetailStage.load(tmp_path / "run")
    assert stage.flow.config.condition_in == "prior"
    faces, ages = heldout_faces(folder)
    older = stage.change(faces, torch.zeros(2, 3, 64, 64), ages, ages + 30)
    torch.testing.assert_close(haar_split(older)[0], torch.zeros(2, 3, 64, 64), atol=1e-6, rtol=0)
    assert older.abs().max() > 1e-4  # the target age alone redraws the detail


def test_in_a_batch_a_face_whose_edit_changes_nothing_keeps_its_pixels_exactly(face_folder, trained_run):
    stage = DetailStage.load(trained_run / "trained")
    faces, ages = heldout_faces(face_folder)
    low_change = torch.zeros(2, 3, 64, 64)
    low_change[1] = 0.05
    change = stage.change(faces, low_change, ages, np.array([ages[0], ages[1] + 10]))
    assert torch.equal(change[0], torch.zeros_like(change[0]))
    assert change[1].abs().max() > 1e-3


def test_a_blurred_context_is_the_block_average_smoothed_and_travels_with_the_saved_stage(tmp_path):
    low = torch.zeros(1, 3, 64, 64)
    low[:, :, :, 32:] = 1.0  # a sharp vertical edge between blocks
    low[:, :, 10, 10] = 1.0  # one bright pixel: gone into its block's average
    sharp, blurred = padded_context(low, 4), padded_context(low, 4, blur=8)
    m = 4
    assert torch.equal(sharp[:, :, m:-m, m:-m], low - 0.5)
    inner = blurred[:, :, m:-m, m:-m] + 0.5
    assert abs(inner[0, 0, 10, 10].item() - 1 / 64) < 0.02  # the pixel's block average, nearly
    assert 0.2 < inner[0, 0, 20, 31].item() < 0.5 < inner[0, 0, 20, 32].item() < 0.8  # the edge, softened
    assert torch.allclose(inner.mean(), low.mean(), atol=1e-6)
    stage = DetailStage.new(DetailConfig(steps=(1, 1), width=8, encoder_width=8, features=4), context_blur=4)
    stage.save(tmp_path)
    loaded = DetailStage.load(tmp_path)
    assert loaded.context_blur == 4
    torch.testing.assert_close(loaded.context(low), padded_context(low, stage.margin, 4))
    with pytest.raises(ValueError, match="divide 64"):
        DetailStage.new(context_blur=3)


def test_the_aged_change_redraws_the_detail_under_the_faces_own_low_band(face_folder, trained_run):
    stage = DetailStage.load(trained_run / "trained")
    faces, ages = heldout_faces(face_folder)
    targets = np.array([ages[0], ages[1] + 30])
    aged = stage.aged_change(faces, ages, targets)
    assert torch.equal(aged[0], torch.zeros_like(aged[0]))  # no change of age: exactly none
    assert aged[1].abs().max() > 1e-4
    torch.testing.assert_close(haar_split(aged)[0], torch.zeros(2, 3, 64, 64), atol=1e-6, rtol=0)
    # the same as the designed edit with no 64 px change
    torch.testing.assert_close(aged, stage.change(faces, torch.zeros(2, 3, 64, 64), ages, targets), atol=1e-6, rtol=0)


@pytest.fixture()
def staged_editor(age_editor, trained_run):
    """The shipped editor with the tiny trained detail stage in place of whatever the weights hold."""
    from model.editor import AgeEditor

    return AgeEditor(
        age_editor.trajectory,
        age_editor.settings,
        age_editor.aligner,
        detail_stage=DetailStage.load(trained_run / "trained"),
    )


def test_with_a_detail_stage_the_detail_is_redrawn_and_the_curve_rescales_the_rest(staged_editor, photo):
    from model.editor import finer_than

    image = photo("skimage_astronaut.png")
    aligned = staged_editor.align(image, staged_editor.find_faces(image))[0]
    face = aligned.cut(image, staged_editor.resolution)[None]
    work = aligned.cut(image, 256)[None]
    (older,) = staged_editor.edit(face, years=30)
    change = staged_editor.fine_detail_change(work, [older])
    small = F.interpolate(work, size=128, mode="area")
    stage_part = F.interpolate(
        staged_editor.detail_stage.aged_change(small, [older.age_before], [older.age_after]),
        size=256,
        mode="bilinear",
        align_corners=False,
    )
    assert stage_part.abs().max() > 1e-4
    gain = staged_editor.fine_detail.gain(older.age_before, older.age_after)
    assert gain > 1.05  # an older face: its finest detail grows
    torch.testing.assert_close(change - stage_part, (gain - 1) * finer_than(work, 128), atol=1e-6, rtol=0)
    # at the stage's own 128 px, an older face's change is the stage's alone
    torch.testing.assert_close(
        staged_editor.fine_detail_change(small, [older]),
        staged_editor.detail_stage.aged_change(small, [older.age_before], [older.age_after]),
        atol=0,
        rtol=0,
    )
    # a younger face's redrawn crop has its fine detail softened by the curve as well
    (younger,) = staged_editor.edit(face, years=-25)
    ages = [younger.age_before], [younger.age_after]
    redrawn = F.interpolate(
        staged_editor.detail_stage.aged_change(small, *ages), size=256, mode="bilinear", align_corners=False
    )
    assert staged_editor.fine_detail.gain(*ages[0], *ages[1]) < 1.0
    softened = redrawn + staged_editor.fine_detail.change(work + redrawn, *ages)
    torch.testing.assert_close(staged_editor.fine_detail_change(work, [younger]), softened, atol=1e-6, rtol=0)


def test_with_a_detail_stage_a_zero_edit_returns_the_photo_bit_identical(staged_editor, photo):
    image = photo("skimage_astronaut.png")
    result = staged_editor.age_photo(image, years=0)
    assert np.array_equal(result.image, image)
    aligned = staged_editor.align(image, staged_editor.find_faces(image))[0]
    (unchanged,) = staged_editor.edit(aligned.cut(image, staged_editor.resolution)[None], years=0)
    work = aligned.cut(image, 256)[None]
    assert torch.equal(staged_editor.fine_detail_change(work, [unchanged]), torch.zeros_like(work))


def test_the_weights_folders_detail_stage_is_loaded_and_reported(age_editor, trained_run, tmp_path):
    from app.settings import Settings
    from model.checkpoint import WEIGHTS
    from model.editor import AgeEditor

    weights = Settings.from_env().weights_dir
    for path in weights.iterdir():
        if path.is_file() and not path.name.startswith("detail"):
            (tmp_path / path.name).symlink_to(path.resolve())
    assert AgeEditor.from_dir(tmp_path, aligner=age_editor.aligner).info()["detail"] is None
    DetailStage.load(trained_run / "trained").save(tmp_path)
    editor = AgeEditor.from_dir(tmp_path, aligner=age_editor.aligner)
    assert (tmp_path / WEIGHTS).exists()
    assert editor.info()["detail"]["resolution"] == 128
    assert editor.info()["detail"]["parameters"] == sum(p.numel() for p in editor.detail_stage.flow.parameters())
