"""`python -m model.prepare` on small labelled folders built from the fixture photos."""

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from model import prepare
from model.align import FaceAligner

HELDOUT = 0.4
SIDES = (16, 32)
# file -> (fixture photo, age, gender, race); what prepare must make of each is in EXPECTED_DROPS
PHOTOS = {
    "astronaut.png": ("skimage_astronaut.png", 40, "female", "white"),
    "obama.jpg": ("fr_obama.jpg", 47, "male", "black"),
    "obama_small.jpg": ("frrepo_obama_small.jpg", 47, "male", "black"),
    "rgba.png": ("fr_32bit_rgba.png", 48, "male", "black"),
    "coffee.png": ("skimage_coffee_noface.png", 30, "female", "white"),
    "two_people.jpg": ("frrepo_two_people.jpg", 66, "male", "white"),
}
# astronaut_cut.png is cut too close to cover the "tight" framing with its own pixels
EXPECTED_DROPS = {"no face": 1, "several faces": 1, "unreadable": 1, "crop not covered": 1}


def write_labels(folder, rows, with_race: bool) -> None:
    with open(folder / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "age", "gender", "race"] if with_race else ["file", "age", "gender"])
        writer.writerows(row if with_race else row[:3] for row in rows)


@pytest.fixture(scope="module")
def sources(tmp_path_factory, fixtures_dir):
    """Two labelled folders: whole photos (with a large, an unreadable and a duplicate one), and tight crops."""
    root = tmp_path_factory.mktemp("sources")
    photos, tight = root / "photos", root / "utkface-mini"
    (photos / "images").mkdir(parents=True)
    (tight / "images").mkdir(parents=True)
    rows = []
    for file, (fixture, age, gender, race) in PHOTOS.items():
        shutil.copy(fixtures_dir / fixture, photos / "images" / file)
        rows.append([file, age, gender, race])
    with Image.open(fixtures_dir / "skimage_astronaut.png") as im:
        framed = Image.new("RGB", (712, 712), (128, 128, 128))  # room above the face for the tight framing
        framed.paste(im.convert("RGB"), (100, 100))
        framed.resize((2400, 2400), Image.BICUBIC).save(photos / "images" / "astronaut_large.jpg")
        im.convert("RGB").crop((170, 50, 280, 185)).save(tight / "images" / "astronaut_tight.png")
        im.convert("RGB").crop((185, 85, 265, 175)).save(tight / "images" / "astronaut_cut.png")
    rows.append(["astronaut_large.jpg", 40, "female", "white"])
    (photos / "images" / "broken.jpg").write_bytes(b"not a photo")
    rows.append(["broken.jpg", 50, "male", "asian"])
    write_labels(photos, rows, with_race=True)
    shutil.copy(photos / "images" / "obama.jpg", tight / "images" / "obama.jpg")
    write_labels(
        tight,
        [
            ["astronaut_tight.png", 41, "female", ""],
            ["astronaut_cut.png", 41, "female", ""],
            ["obama.jpg", 1, "female", ""],
        ],
        with_race=False,
    )
    return photos, tight


def run_prepare(sources, out) -> dict:
    prepare.main(
        [str(s) for s in sources]
        + [
            "--out",
            str(out),
            "--sides",
            ",".join(map(str, SIDES)),
            "--heldout",
            str(HELDOUT),
            "--seed",
            "3",
            "--workers",
            "1",
        ]
    )
    return json.loads((out / "report.json").read_text())


def read_rows(out) -> list[dict]:
    with open(out / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def prepared(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("faces")
    return out, run_prepare(sources, out)


def test_report_counts_every_image_and_each_reason_for_dropping_one(prepared):
    _, report = prepared
    assert report["dropped"] == EXPECTED_DROPS
    assert report["images"] == 10
    assert report["kept"] == report["images"] - sum(EXPECTED_DROPS.values())
    assert report["per_source"] == {"photos": 5, "utkface-mini": 1}


def test_large_photos_are_kept_and_crops_that_would_need_invented_pixels_are_not(prepared):
    out, _ = prepared
    files = {row["file"] for row in read_rows(out)}
    assert {"astronaut_large.jpg", "astronaut_tight.png", "rgba.png"} <= files
    assert "astronaut_cut.png" not in files


def test_the_black_corners_of_a_photo_rotated_upright_are_not_valid_pixels():
    photo = np.full((120, 100, 3), 200, np.uint8)
    photo[40:60, 30:70] = 5  # dark hair in the middle is part of the photo
    rotated = np.asarray(Image.fromarray(photo).rotate(12, expand=False, fillcolor=(0, 0, 0)))
    valid = prepare.valid_pixels(rotated)
    assert not valid[0, 0] and not valid[-1, -1] and not valid[0, -1] and not valid[-1, 0]
    assert valid[50, 50] and valid[60:, 50].all()
    assert valid.mean() > 0.85


def test_a_crop_reaching_outside_the_photo_has_less_than_full_coverage():
    from model.align import crop_coverage

    valid = np.ones((100, 100), bool)
    # photo -> unit crop matrices: a 60 px box inside the photo at (20, 20), and a 120 px box at (-12, -12)
    inside = np.array([[1 / 60, 0, -20 / 60], [0, 1 / 60, -20 / 60]])
    overhanging = np.array([[1 / 120, 0, 0.1], [0, 1 / 120, 0.1]])
    assert crop_coverage(valid, inside, 32) == 1.0
    assert crop_coverage(valid, overhanging, 32) < 0.5


def test_photo_named_in_two_sources_is_kept_once_from_the_first(prepared):
    out, _ = prepared
    obama = [row for row in read_rows(out) if row["file"] == "obama.jpg"]
    assert len(obama) == 1 and obama[0]["source"] == "photos" and obama[0]["age"] == "47"


def test_each_side_gets_one_uint8_crop_per_kept_face(prepared):
    out, report = prepared
    for side in SIDES:
        faces = np.load(out / f"faces_{side}.npy")
        assert faces.shape == (report["kept"], side, side, 3) and faces.dtype == np.uint8


def test_labels_carry_the_fixed_split_of_each_file(prepared):
    out, _ = prepared
    rows = read_rows(out)
    assert list(rows[0]) == ["index", "file", "source", "age", "gender", "race", "split"]
    assert [int(row["index"]) for row in rows] == list(range(len(rows)))
    for row in rows:
        assert row["split"] == ("heldout" if prepare.heldout(row["file"], HELDOUT, 3) else "train")
    assert {row["split"] for row in rows} == {"train", "heldout"}


def test_prepared_crops_match_the_service_alignment(prepared, photo, aligner):
    out, _ = prepared
    index = next(int(row["index"]) for row in read_rows(out) if row["file"] == "astronaut.png")
    image = photo("skimage_astronaut.png")
    tight = FaceAligner(framing="tight")
    crop = tight.align(image, tight.detect(image)[0], (32,)).crops[32].permute(1, 2, 0).numpy()
    assert np.abs(np.load(out / "faces_32.npy")[index] / 255.0 - crop).mean() < 0.04


def test_rerun_reuses_the_detections_and_gives_the_same_output(prepared, sources, tmp_path):
    out, report = prepared
    again = tmp_path / "faces"
    shutil.copytree(out / "shards", again / "shards")
    written = {p.name: p.stat().st_mtime_ns for p in (again / "shards").iterdir()}
    assert run_prepare(sources, again) == report
    assert {p.name: p.stat().st_mtime_ns for p in (again / "shards").iterdir()} == written
    for side in SIDES:
        assert np.array_equal(np.load(again / f"faces_{side}.npy"), np.load(out / f"faces_{side}.npy"))
    assert read_rows(again) == read_rows(out)


def test_heldout_split_is_a_fixed_function_of_name_and_seed():
    names = [f"face_{i}.jpg" for i in range(2000)]
    first = [prepare.heldout(n, 0.05, seed=0) for n in names]
    assert [prepare.heldout(n, 0.05, seed=0) for n in reversed(names)] == first[::-1]
    assert first != [prepare.heldout(n, 0.05, seed=1) for n in names]


def test_heldout_split_takes_the_requested_fraction():
    names = [f"face_{i}.jpg" for i in range(4000)]
    assert sum(prepare.heldout(n, 0.05, seed=0) for n in names) / len(names) == pytest.approx(0.05, abs=0.015)


def test_heldout_split_grows_without_moving_faces_out_of_it():
    names = [f"face_{i}.jpg" for i in range(1000)]
    small = {n for n in names if prepare.heldout(n, 0.05, seed=0)}
    large = {n for n in names if prepare.heldout(n, 0.10, seed=0)}
    assert small < large
