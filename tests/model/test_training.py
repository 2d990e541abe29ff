"""`python -m model.train` on a small set of real aligned faces: exact resume, and learning that generalizes."""

import csv
import math
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model import train
from model.align import warp_to_crop
from model.checkpoint import load_flow
from model.config import FlowConfig
from model.data import load_faces
from model.evaluation import evaluate_bits_per_dim, evaluate_heads
from model.flow.glow import Glow
from model.heads import load_heads

# (photo, face index, age, gender, race); the last face is held out
FACES = [
    ("skimage_astronaut.png", 0, 40, "female", "white"),
    ("fr_obama.jpg", 0, 47, "male", "black"),
    ("frrepo_obama_small.jpg", 0, 47, "male", "black"),
    ("frrepo_two_people.jpg", 1, 48, "male", "black"),
    ("fr_32bit_rgba.png", 0, 48, "male", "black"),
    ("frrepo_two_people.jpg", 0, 66, "male", "white"),
]
COPIES = 16
SIDES = (16, 32)
CPU = ["--device", "cpu", "--threads", "1", "--checkpoint-every", "100000"]
TINY = ["--levels", "2", "--steps", "2", "--width", "16", *CPU]


def jittered(matrix: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The alignment followed by a small random rotation, scaling and shift about the crop centre."""
    angle, scale = np.radians(rng.uniform(-4, 4)), rng.uniform(0.96, 1.04)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shift = 0.5 - rotation @ [0.5, 0.5] + rng.uniform(-0.02, 0.02, 2)
    return np.hstack([rotation @ matrix[:, :2], (rotation @ matrix[:, 2] + shift)[:, None]])


@pytest.fixture(scope="module")
def face_folder(tmp_path_factory, photo, aligner):
    """A data set in the format of `model.prepare`: COPIES jittered crops of each real face."""
    folder = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    crops = {side: [] for side in SIDES}
    rows = []
    for number, (name, which, age, gender, race) in enumerate(FACES):
        image = photo(name)
        matrix = aligner.alignment(aligner.detect(image)[which])
        split = "heldout" if number == len(FACES) - 1 else "train"
        for copy in range(COPIES):
            m = matrix if copy == 0 else jittered(matrix, rng)
            for side in SIDES:
                crop = warp_to_crop(image, m, side).permute(1, 2, 0).numpy()
                crops[side].append((crop * 255 + 0.5).astype(np.uint8))
            rows.append([len(rows), f"{number}_{copy}.png", "fixtures", age, gender, race, split])
    for side in SIDES:
        np.save(folder / f"faces_{side}.npy", np.stack(crops[side]))
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "file", "source", "age", "gender", "race", "split"])
        writer.writerows(rows)
    return folder


def final_weights(run) -> dict[str, torch.Tensor]:
    return load_file(str(run / "flow.safetensors"))


def test_prepared_format_loads_as_train_and_heldout_faces(face_folder):
    train_faces = load_faces(face_folder, 32, "train")
    heldout_faces = load_faces(face_folder, 32, "heldout")
    assert len(train_faces) == (len(FACES) - 1) * COPIES and len(heldout_faces) == COPIES
    assert train_faces.batch([0, 1]).shape == (2, 3, 32, 32)
    assert heldout_faces.ages[0] == 66 and heldout_faces.races[0] == "white"


def test_resumed_training_ends_with_the_weights_of_an_uninterrupted_run(face_folder, tmp_path):
    common = [
        "--data",
        str(face_folder),
        "--resolution",
        "16",
        *TINY,
        "--batch-size",
        "4",
        "--train-limit",
        "12",
        "--warmup",
        "3",
        "--eval-limit",
        "4",
    ]
    train.main([*common, "--run", str(tmp_path / "straight"), "--max-steps", "8"])
    train.main([*common, "--run", str(tmp_path / "resumed"), "--max-steps", "4"])
    train.main([*common, "--run", str(tmp_path / "resumed"), "--max-steps", "8", "--resume"])
    for weights in ("flow.safetensors", "heads.safetensors"):
        straight = load_file(str(tmp_path / "straight" / weights))
        resumed = load_file(str(tmp_path / "resumed" / weights))
        assert straight.keys() == resumed.keys()
        for name in straight:
            assert torch.equal(resumed[name], straight[name]), (weights, name)
    straight = final_weights(tmp_path / "straight")
    last_coupling_conv = straight["levels.0.0.layers.2.net.4.conv.weight"]
    assert last_coupling_conv.abs().max() > 0


def test_resume_continues_from_the_saved_step(face_folder, tmp_path):
    common = [
        "--data",
        str(face_folder),
        "--resolution",
        "16",
        *TINY,
        "--batch-size",
        "4",
        "--train-limit",
        "12",
        "--run",
        str(tmp_path),
    ]
    train.main([*common, "--max-steps", "2"])
    train.main([*common, "--max-steps", "5", "--resume"])
    state = torch.load(tmp_path / "train_state.pt", weights_only=True)
    assert (state["step"], state["epoch"], state["position"]) == (5, 1, 2)


def test_training_with_fewer_faces_than_a_batch_stops_with_a_message(face_folder, tmp_path):
    with pytest.raises(SystemExit, match="fewer than one batch"):
        train.main(
            [
                "--data",
                str(face_folder),
                "--resolution",
                "16",
                *TINY,
                "--batch-size",
                "8",
                "--train-limit",
                "5",
                "--max-steps",
                "3",
                "--run",
                str(tmp_path),
            ]
        )


def test_training_restores_the_signal_handlers_it_replaced(face_folder, tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    train.main(
        [
            "--data",
            str(face_folder),
            "--resolution",
            "16",
            *TINY,
            "--batch-size",
            "4",
            "--train-limit",
            "8",
            "--max-steps",
            "1",
            "--run",
            str(tmp_path),
        ]
    )
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


def test_evaluation_without_heldout_faces_is_nan_rather_than_an_error(face_folder):
    no_faces = load_faces(face_folder, 16, split="absent")
    assert len(no_faces) == 0
    assert math.isnan(
        evaluate_bits_per_dim(Glow(FlowConfig(resolution=16, levels=2, steps=1, width=8)), no_faces, "cpu")
    )


def test_short_training_on_real_faces_lowers_heldout_bits_per_dim(face_folder, tmp_path):
    common = [
        "--data",
        str(face_folder),
        "--resolution",
        "32",
        "--levels",
        "2",
        "--steps",
        "4",
        "--width",
        "32",
        *CPU,
        "--batch-size",
        "16",
        "--lr",
        "2e-3",
        "--warmup",
        "10",
    ]
    train.main([*common, "--run", str(tmp_path / "initial"), "--epochs", "0"])
    train.main([*common, "--run", str(tmp_path / "trained"), "--max-steps", "100"])
    heldout = load_faces(face_folder, 32, "heldout")
    before = evaluate_bits_per_dim(load_flow(tmp_path / "initial"), heldout, "cpu")
    after = evaluate_bits_per_dim(load_flow(tmp_path / "trained"), heldout, "cpu")
    assert math.isfinite(before) and math.isfinite(after)
    assert after < before - 0.5, (before, after)


def test_per_level_capacity_is_built_and_saved_with_the_model(face_folder, tmp_path):
    train.main(
        [
            "--data",
            str(face_folder),
            "--resolution",
            "16",
            "--levels",
            "2",
            "--level-widths",
            "8,24",
            "--level-steps",
            "1,3",
            *CPU,
            "--batch-size",
            "4",
            "--train-limit",
            "8",
            "--max-steps",
            "1",
            "--run",
            str(tmp_path),
        ]
    )
    flow = load_flow(tmp_path)
    assert [len(steps) for steps in flow.levels] == [1, 3]
    assert flow.levels[1][0].layers[2].net[0].out_channels == 24


def test_training_the_heads_teaches_the_top_latent_the_training_faces_labels(face_folder, tmp_path):
    common = [
        "--data",
        str(face_folder),
        "--resolution",
        "16",
        *TINY,
        "--batch-size",
        "16",
        "--lr",
        "2e-3",
        "--warmup",
        "5",
        "--heads-weight",
        "3000",
    ]
    train.main([*common, "--run", str(tmp_path), "--max-steps", "60"])
    flow, heads = load_flow(tmp_path), load_heads(tmp_path / "heads.safetensors")
    faces = load_faces(face_folder, 16, "train")
    readout = evaluate_heads(flow, heads, faces, "cpu")
    # one face in four is the astronaut (female, 40); the others are men of 47 and 48
    assert readout["heldout_gender_acc"] == 1.0
    assert readout["heldout_age_mae"] < 3.0


def test_the_learning_rate_warms_up_holds_then_decays_by_cosine_to_its_floor():
    import argparse

    from model.run_options import learning_rate

    args = argparse.Namespace(lr=1e-3, warmup=100, decay_from=1000, lr_floor=0.05)
    assert learning_rate(args, 0, 2000) == pytest.approx(1e-5)
    assert learning_rate(args, 500, 2000) == pytest.approx(1e-3)
    assert learning_rate(args, 1000, 2000) == pytest.approx(1e-3)
    assert learning_rate(args, 1500, 2000) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    assert learning_rate(args, 2000, 2000) == pytest.approx(5e-5)
    rates = [learning_rate(args, s, 2000) for s in range(1000, 2001, 50)]
    assert all(a >= b for a, b in zip(rates, rates[1:]))
    assert learning_rate(argparse.Namespace(lr=1e-3, warmup=100, decay_from=0, lr_floor=0.05), 1999, 2000) == 1e-3


def test_the_run_summary_counts_whole_epochs_of_whole_batches(face_folder, tmp_path):
    """10 faces in batches of 4 make 2 steps an epoch (the last 2 faces wait for the next shuffle): 3 epochs
    are 6 steps, and the summary says 3, not 6 * 4 / 10 = 2.4; its last step is the final evaluation's."""
    from model.export import run_summary

    train.main(
        [
            "--data",
            str(face_folder),
            "--resolution",
            "16",
            *TINY,
            "--batch-size",
            "4",
            "--train-limit",
            "10",
            "--epochs",
            "3",
            "--run",
            str(tmp_path),
        ]
    )
    summary = run_summary(tmp_path, faces=10)
    assert summary["training_steps"] == 6
    assert summary["training_epochs"] == 3.0
