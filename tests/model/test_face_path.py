"""One face object from detection to answer: each result carries the detector's face with its alignment,
and a face's crops are cut only at the sides that are read."""

import numpy as np
import pytest

from model.align import FaceAligner


@pytest.fixture(scope="module")
def two_people(photo):
    return photo("frrepo_two_people.jpg")


def test_a_crop_is_cut_once_at_the_side_asked_and_then_kept(photo, aligner):
    image = photo("skimage_astronaut.png")
    aligned = aligner.align(image, aligner.detect(image)[0], (64,))
    assert set(aligned.crops) == {64}
    crop = aligned.cut(image, 128)
    assert crop.shape == (3, 128, 128) and set(aligned.crops) == {64, 128}
    assert aligned.cut(image, 128) is crop


def test_each_edited_face_is_the_detectors_own_face_with_its_alignment(age_editor, two_people, monkeypatch):
    detected = age_editor.aligner.detect(two_people)
    monkeypatch.setattr(age_editor.aligner, "detect", lambda image, smallest=20.0: detected)
    result = age_editor.age_photo(two_people, years=30)
    assert len(result.faces) == len(detected) and all(f.face is d for f, d in zip(result.faces, detected))
    for face in result.faces:
        expected = FaceAligner.alignment(face.face, age_editor.framing)
        assert np.array_equal(face.aligned.matrix, expected) and face.aligned.framing == age_editor.framing


def test_a_face_skipped_carries_the_detectors_face(age_editor, two_people):
    result = age_editor.age_photo(two_people, years=30, faces="largest")
    (skipped,) = result.skipped
    assert skipped.reason == "largest_only"
    assert skipped.face.size < result.faces[0].face.size


def test_alignment_for_reading_cuts_only_the_flows_crop(age_editor, two_people):
    aligned = age_editor.align(two_people, age_editor.find_faces(two_people))
    assert [set(a.crops) for a in aligned] == [{age_editor.resolution}] * 2


def test_a_photo_edit_without_fine_detail_or_a_tint_limit_cuts_no_work_crop(age_editor, two_people, monkeypatch):
    from model.editor import TINT_KEY

    monkeypatch.setattr(age_editor, "fine_detail", None)
    monkeypatch.setattr(age_editor, "detail_stage", None)
    monkeypatch.setattr(age_editor, "settings", {k: v for k, v in age_editor.settings.items() if k != TINT_KEY})
    result = age_editor.age_photo(two_people, years=30)
    assert [set(f.aligned.crops) for f in result.faces] == [{age_editor.resolution}] * 2
    # the tint limit reads the photo's own colour from the work crop
    monkeypatch.setattr(age_editor, "settings", {**age_editor.settings, TINT_KEY: {"max_gain": 2.0, "max_turn": 0.5}})
    result = age_editor.age_photo(two_people, years=30)
    assert [set(f.aligned.crops) for f in result.faces] == [{age_editor.resolution, age_editor.work_size}] * 2


def test_a_faces_only_answer_cuts_the_work_crop_it_shows(age_editor, two_people, monkeypatch):
    monkeypatch.setattr(age_editor, "fine_detail", None)
    monkeypatch.setattr(age_editor, "detail_stage", None)
    result = age_editor.age_photo(two_people, years=30, photo_pixels=0)
    assert [set(f.aligned.crops) for f in result.faces] == [{age_editor.resolution, age_editor.work_size}] * 2


def test_with_a_fine_detail_curve_a_photo_edit_cuts_the_work_crop(age_editor, two_people, monkeypatch):
    if age_editor.fine_detail is None:
        pytest.skip("the model has no fine-detail curve (editor.json fine_detail)")
    monkeypatch.setattr(age_editor, "detail_stage", None)
    result = age_editor.age_photo(two_people, years=30, faces="largest")
    assert set(result.faces[0].aligned.crops) == {age_editor.resolution, age_editor.work_size}


def test_with_a_detail_stage_a_photo_edit_cuts_the_work_crop(age_editor, two_people, monkeypatch):
    if age_editor.detail_stage is None:
        pytest.skip("the model has no detail stage (detail_config.json)")
    monkeypatch.setattr(age_editor, "fine_detail", None)
    result = age_editor.age_photo(two_people, years=30, faces="largest")
    assert set(result.faces[0].aligned.crops) == {age_editor.resolution, age_editor.work_size}


def test_the_photo_is_pasted_under_the_mask_of_the_framing_the_face_was_aligned_in(photo, aligner):
    import torch

    from model.align import AlignedFace, paste_back
    from model.editor import paste_in_place

    image = photo("fr_obama.jpg")
    face = aligner.detect(image)[0]
    change = torch.full((3, 64, 64), 0.2)
    areas = {}
    for framing in ("loose", "tight"):
        aligned = AlignedFace(face=face, matrix=FaceAligner.alignment(face, framing), framing=framing)
        pasted = image.copy()
        paste_in_place(pasted, aligned, change, strip_pixels=20_000)
        assert np.array_equal(pasted, paste_back(image, aligned, change))
        areas[framing] = int(np.any(pasted != image, axis=2).sum())
    assert areas["tight"] != areas["loose"]
