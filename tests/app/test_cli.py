"""`python -m app.cli`: the service's pipeline and errors on files and folders."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import app.cli
from app.cli import main
from model.edit_rules import MAX_YEARS, ONE_KIND_OF_EDIT, YEARS_OUT_OF_RANGE

ROOT = Path(__file__).parents[2]


@pytest.fixture
def shared_editor(age_editor, monkeypatch):
    """The session's editor instead of loading the model again for every run: for the tests that run the model
    here (without --server); they skip, as age_editor does, without weights. The usage tests and the --server
    tests (the fake editor's service) run without weights."""
    monkeypatch.setattr(app.cli, "load_editor", lambda settings: age_editor)


local_model = pytest.mark.usefixtures("shared_editor")


@pytest.fixture
def photos(tmp_path, fixtures_dir, upload_files) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("frrepo_obama_small.jpg", "skimage_coffee_noface.png"):
        shutil.copy(fixtures_dir / name, folder / name)
    (folder / "phone.heic").write_bytes(upload_files["heic"])
    (folder / "camera.jpg").write_bytes(upload_files["mpo"])
    (folder / "notes.txt").write_text("not a photo")
    return folder


@local_model
def test_one_photo_to_one_file(photos, tmp_path, capsys):
    output = tmp_path / "older.jpg"
    assert main([str(photos / "frrepo_obama_small.jpg"), "--years", "30", "-o", str(output)]) == 0
    assert Image.open(output).size == (320, 240)
    assert "1 face(s)" in capsys.readouterr().out


@local_model
def test_output_suffix_chooses_the_format(photos, tmp_path):
    output = tmp_path / "older.png"
    assert main([str(photos / "frrepo_obama_small.jpg"), "--target-age", "60", "-o", str(output)]) == 0
    assert Image.open(output).format == "PNG"


@local_model
def test_largest_face_only(fixtures_dir, tmp_path, capsys):
    output = tmp_path / "one.jpg"
    assert (
        main([str(fixtures_dir / "frrepo_two_people.jpg"), "--years", "-10", "--faces", "largest", "-o", str(output)])
        == 0
    )
    assert "1 face(s)" in capsys.readouterr().out


@local_model
def test_folder_to_folder_reports_failures_and_ages_the_rest(photos, tmp_path, capsys):
    output = tmp_path / "aged"
    assert main([str(photos), "--years", "20", "-o", str(output)]) == 1
    assert sorted(p.name for p in output.iterdir()) == ["camera.jpg", "frrepo_obama_small.jpg", "phone.jpg"]
    error = capsys.readouterr().err
    assert "skimage_coffee_noface.png: No face was found" in error
    assert "notes.txt" not in error


@local_model
def test_several_files_go_to_a_folder(photos, tmp_path):
    output = tmp_path / "aged"
    assert (
        main([str(photos / "frrepo_obama_small.jpg"), str(photos / "phone.heic"), "--years", "5", "-o", str(output)])
        == 0
    )
    assert sorted(p.name for p in output.iterdir()) == ["frrepo_obama_small.jpg", "phone.jpg"]


@local_model
def test_a_file_that_is_not_a_photo_fails_with_the_services_message(photos, tmp_path, capsys):
    assert main([str(photos / "notes.txt"), "--years", "5", "-o", str(tmp_path / "out.jpg")]) == 1
    assert "not a photo in a supported format" in capsys.readouterr().err


def test_an_output_in_a_missing_folder_is_a_usage_error_that_names_the_folder(photos, tmp_path, capsys):
    photo = photos / "frrepo_obama_small.jpg"
    assert main([str(photo), "--years", "5", "-o", str(tmp_path / "absent" / "out.jpg")]) == 2
    error = capsys.readouterr().err
    assert f"the folder {tmp_path / 'absent'} does not exist" in error
    assert str(photo) not in error


@local_model
def test_the_time_taken_is_said(photos, tmp_path, capsys):
    assert main([str(photos / "frrepo_obama_small.jpg"), "--years", "5", "-o", str(tmp_path / "out.jpg")]) == 0
    captured = capsys.readouterr()
    assert "importing torch and the model code" in captured.err and "loading the model" in captured.err
    assert captured.out.rstrip().endswith(" s)")


def test_missing_input_is_a_usage_error(tmp_path, capsys):
    assert main([str(tmp_path / "absent.jpg"), "--years", "5", "-o", str(tmp_path / "out.jpg")]) == 2
    assert "no such file" in capsys.readouterr().err


@local_model
def test_target_age_outside_the_models_range_is_refused(photos, tmp_path, age_editor, capsys):
    too_old = str(age_editor.age_range[1] + 5)
    assert main([str(photos / "frrepo_obama_small.jpg"), "--target-age", too_old, "-o", str(tmp_path / "out.jpg")]) == 2
    assert "outside the model's range" in capsys.readouterr().err


def test_years_and_target_age_together_are_refused(photos, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                str(photos / "frrepo_obama_small.jpg"),
                "--years",
                "5",
                "--target-age",
                "50",
                "-o",
                str(tmp_path / "out.jpg"),
            ]
        )
    assert exit_info.value.code == 2


def test_years_beyond_the_bound_are_refused_with_the_rules_message(photos, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(photos / "frrepo_obama_small.jpg"), "--years", str(MAX_YEARS + 1), "-o", str(tmp_path / "out.jpg")])
    assert exit_info.value.code == 2
    assert YEARS_OUT_OF_RANGE in capsys.readouterr().err


def test_neither_years_nor_target_age_is_refused_with_the_services_message(photos, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(photos / "frrepo_obama_small.jpg"), "-o", str(tmp_path / "out.jpg")])
    assert exit_info.value.code == 2
    assert ONE_KIND_OF_EDIT in capsys.readouterr().err


def test_runs_as_a_module(photos, tmp_path, age_editor):
    """A process of its own, which loads the model from WEIGHTS_DIR (age_editor: skipped without it)."""
    output = tmp_path / "older.jpg"
    finished = subprocess.run(
        [sys.executable, "-m", "app.cli", str(photos / "frrepo_obama_small.jpg"), "--years", "30", "-o", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr
    assert Image.open(output).size == (320, 240)


def test_server_ages_several_photos_in_one_call(photos, tmp_path, server_url, capsys):
    output = tmp_path / "aged"
    assert (
        main(
            [
                str(photos / "frrepo_obama_small.jpg"),
                str(photos / "phone.heic"),
                "--years",
                "20",
                "-o",
                str(output),
                "--server",
                server_url,
            ]
        )
        == 0
    )
    assert sorted(p.name for p in output.iterdir()) == ["frrepo_obama_small.jpg", "phone.jpg"]
    assert Image.open(output / "phone.jpg").size == (320, 240)
    assert capsys.readouterr().out.count("1 face(s), ages ") == 2


def test_server_errors_are_the_services_messages(photos, tmp_path, server_url, capsys):
    assert (
        main(
            [
                str(photos / "skimage_coffee_noface.png"),
                "--years",
                "20",
                "-o",
                str(tmp_path / "out.png"),
                "--server",
                server_url,
            ]
        )
        == 1
    )
    assert "skimage_coffee_noface.png: No face was found" in capsys.readouterr().err


def test_an_unreachable_server_is_said_so(photos, tmp_path, capsys):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    assert (
        main([str(photos / "frrepo_obama_small.jpg"), "--years", "5", "-o", str(tmp_path / "out.jpg"), "--server", url])
        == 1
    )
    assert f"the service at {url} cannot be reached" in capsys.readouterr().err


def test_with_a_server_torch_is_never_imported():
    finished = subprocess.run(
        [sys.executable, "-c", "import sys, app.cli; print('torch' in sys.modules)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.stdout.strip() == "False", finished.stderr
