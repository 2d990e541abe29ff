"""The HTTP API: every route and every error a bad upload or parameter can cause, served from the fake editor
(tests/fakes.py), and real edits of real photos by the shipped model (`model_client`)."""

import base64
import io
import json
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from PIL.PngImagePlugin import PngInfo

import app.main
from app.imaging import decode_image, label_band_height
from app.main import create_app
from app.settings import Settings, SettingsError
from model.edit_rules import EditError
from model.editor import AgeEditor

SMALL_PHOTO = "frrepo_obama_small.jpg"
FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def service_app(fake_editor):
    return create_app(Settings(), editor=fake_editor)


@pytest.fixture(scope="module")
def client(service_app):
    with TestClient(service_app) as client:
        yield client


@pytest.fixture(scope="module")
def model_client(age_editor):
    """The service with the shipped model, for what only the model decides."""
    with TestClient(create_app(Settings(), editor=age_editor)) as client:
        yield client


@pytest.fixture
def small_jpeg(fixtures_dir) -> bytes:
    return (fixtures_dir / SMALL_PHOTO).read_bytes()


def post(client, route, data: bytes, filename="photo.jpg", headers=None, **fields):
    return client.post(
        route,
        files={"image": (filename, data, "application/octet-stream")},
        data={k: str(v) for k, v in fields.items()},
        headers=headers,
    )


def error_of(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["message"]
    return body["error"]["code"]


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def from_base64(image_json: dict) -> Image.Image:
    return opened(base64.b64decode(image_json["data"]))


# ---- probes and model information ----------------------------------------------------------------------


def test_healthz_answers_ok(client):
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_ready_with_a_loaded_model(client):
    assert client.get("/readyz").json() == {"status": "ready"}


def test_readyz_is_503_until_the_model_has_loaded(fake_editor, monkeypatch):
    loaded = threading.Event()

    def slow_load(settings):
        loaded.wait(30)
        return fake_editor

    monkeypatch.setattr(app.main, "load_editor", slow_load)
    with TestClient(create_app(Settings())) as client:
        assert error_of(client.get("/readyz"), 503) == "model_loading"
        assert error_of(client.get("/v1/model"), 503) == "model_loading"
        loaded.set()
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 200


def test_readyz_stays_503_when_the_weights_are_missing(tmp_path):
    with TestClient(create_app(Settings(weights_dir=tmp_path))) as client:
        deadline = time.monotonic() + 30
        while client.app.state.service.load_error is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert error_of(client.get("/readyz"), 503) == "model_unavailable"


def test_model_info_describes_the_model(client, fake_editor):
    info = client.get("/v1/model").json()
    assert info["resolution"] == fake_editor.resolution
    assert info["age_range"] == list(fake_editor.age_range)
    assert info["trajectory"]


def test_model_info_reports_what_the_weights_folder_says(age_editor, tmp_path):
    weights = Settings.from_env().weights_dir
    for path in weights.iterdir():
        if path.is_file():
            shutil.copy(path, tmp_path / path.name)
    settings = json.loads((weights / "editor.json").read_text()) if (weights / "editor.json").exists() else {}
    settings["model"] = {"training_data": "licensed portraits", "heldout_bits_per_dim": 1.31, "hardware": "cpu"}
    (tmp_path / "editor.json").write_text(json.dumps(settings))
    editor = AgeEditor.from_dir(tmp_path, aligner=age_editor.aligner)
    with TestClient(create_app(Settings(), editor=editor)) as client:
        info = client.get("/v1/model").json()
    assert info["training_data"] == "licensed portraits"
    assert info["heldout_bits_per_dim"] == 1.31
    assert info["hardware"] == "cpu"


def test_model_info_reports_the_detail_stage_of_the_weights(age_editor):
    with TestClient(create_app(Settings(), editor=age_editor)) as client:
        info = client.get("/v1/model").json()
    if age_editor.detail_stage is None:
        assert info["detail"] is None
    else:
        assert info["detail"]["resolution"] == 128
        assert info["detail"]["parameters"] == sum(p.numel() for p in age_editor.detail_stage.flow.parameters())


def test_metrics_count_requests_latency_and_faces(client, small_jpeg):
    assert post(client, "/v1/age", small_jpeg, years=10).status_code == 200
    text = client.get("/metrics").text
    assert 'http_requests_total{method="POST",route="/v1/age",status="200"}' in text
    assert 'http_request_duration_seconds_bucket{le="0.5",method="POST",route="/v1/age"}' in text
    assert 'faces_processed_total{route="age"}' in text
    assert 'pipeline_stage_seconds_count{stage="detect"}' in text


def test_web_page_is_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'type="range"' in page.text
    assert client.get("/static/app.js").status_code == 200


def test_openapi_documents_every_route_with_examples(client):
    spec = client.get("/openapi.json").json()
    operations = {path: spec["paths"][path] for path in spec["paths"]}
    for path, method in [
        ("/v1/age", "post"),
        ("/v1/age/series", "post"),
        ("/v1/faces", "post"),
        ("/v1/likelihood", "post"),
        ("/v1/samples", "get"),
        ("/v1/model", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
    ]:
        assert operations[path][method]["summary"]
    age = operations["/v1/age"]["post"]
    assert "multipart/form-data" in age["requestBody"]["content"]
    assert {"image/jpeg", "image/png", "image/webp", "application/json"} <= set(age["responses"]["200"]["content"])
    assert "X-Ages-Before" in age["responses"]["200"]["headers"]
    assert {"no_face", "face_too_small", "invalid_parameters"} <= set(
        age["responses"]["422"]["content"]["application/json"]["examples"]
    )
    assert spec["components"]["schemas"]["AgeForm"]["properties"]["years"]["examples"] == [30]
    assert age["operationId"] == "age_photo"


# ---- ageing photos -----------------------------------------------------------------------------------------


def test_age_returns_the_photo_with_ages_in_headers(client, small_jpeg):
    response = post(client, "/v1/age", small_jpeg, years=20)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-faces"] == "1"
    before, after = (float(response.headers[h]) for h in ("x-ages-before", "x-ages-after"))
    assert float(response.headers["x-age-shift"]) == pytest.approx(after - before, abs=0.11)
    assert opened(response.content).size == (320, 240)


def test_age_edits_inside_the_face_and_leaves_the_rest_alone(model_client, fixtures_dir, photo):
    original = photo("skimage_astronaut.png")
    response = post(
        model_client,
        "/v1/age",
        (fixtures_dir / "skimage_astronaut.png").read_bytes(),
        filename="astronaut.png",
        years=40,
        format="png",
        headers={"Accept": "application/json"},
    )
    assert response.status_code == 200
    body = response.json()
    edited = np.asarray(from_base64(body["image"]).convert("RGB")).astype(int)
    x1, y1, x2, y2 = (int(round(v)) for v in body["faces"][0]["box"])
    inside = np.abs(edited[y1:y2, x1:x2] - original[y1:y2, x1:x2]).mean()
    assert inside > 0.5
    size = max(x2 - x1, y2 - y1)
    far = np.ones(original.shape[:2], bool)
    far[max(0, y1 - size) : y2 + size, max(0, x1 - size) : x2 + size] = False
    np.testing.assert_array_equal(edited[far], original[far])


def test_age_to_a_target_age(model_client, small_jpeg, age_editor):
    target = min(70.0, age_editor.age_range[1])
    response = post(model_client, "/v1/age", small_jpeg, target_age=target, headers={"Accept": "application/json"})
    (face,) = response.json()["faces"]
    assert (face["age_target"], face["clamped"]) == (pytest.approx(target), False)
    assert face["age_after"] == pytest.approx(face["age_before"] + face["strength"] * (target - face["age_before"]))
    assert face["shift"] == pytest.approx(face["age_after"] - face["age_before"])


def test_years_beyond_the_age_range_say_which_target_was_used(model_client, small_jpeg, age_editor):
    response = post(model_client, "/v1/age", small_jpeg, years=100, headers={"Accept": "application/json"})
    (face,) = response.json()["faces"]
    assert (face["age_target"], face["clamped"]) == (pytest.approx(age_editor.age_range[1]), True)
    assert 0.0 <= face["strength"] <= 1.0


# the answer to one fixed request, pinned in a file (test_a_fixed_request_gives_the_pinned_answer)
FIXED_PHOTO = "fr_obama.jpg"
FIXED_REQUEST = {"years": 30, "faces": "all", "output": "photo", "format": "png"}
FIXED_ANSWER = FIXTURES / "expected_fr_obama_years30.png"
FIXED_MARGIN = 8  # pixels of the answer kept around the region the edit changed


def fixed_answer(client) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """FIXED_PHOTO as the service decodes it, the photo the service answers FIXED_REQUEST with, and the
    answer's faces."""
    data = (FIXTURES / FIXED_PHOTO).read_bytes()
    response = post(client, "/v1/age", data, headers={"Accept": "application/json"}, **FIXED_REQUEST)
    assert response.status_code == 200, response.text
    body = response.json()
    settings = Settings()
    upload = decode_image(data, settings.max_upload_bytes, settings.max_pixels).rgb
    return upload, np.asarray(from_base64(body["image"]).convert("RGB")), body["faces"]


def test_a_fixed_request_gives_the_pinned_answer(model_client):
    """The shipped model answers FIXED_REQUEST on FIXED_PHOTO as FIXED_ANSWER pins it: the same photo to within
    the float noise between CPUs (at most 3 grey levels anywhere, under 0.05 on average over the edited
    region; outside it the upload's own pixels), and the same ages and strengths to within 0.05.

    A change to the model, its weights or the edit changes this answer on purpose: check that the new answer
    is meant, then regenerate the file deliberately with `python -m tests.app.test_api` and commit it with
    the change."""
    upload, result, faces = fixed_answer(model_client)
    with Image.open(FIXED_ANSWER) as pinned_file:
        pinned = json.loads(pinned_file.text["fixed_answer"])
        x0, y0, x1, y1 = pinned["box"]
        expected = upload.copy()
        expected[y0:y1, x0:x1] = np.asarray(pinned_file.convert("RGB"))
    difference = np.abs(result.astype(int) - expected)
    edited = difference[y0:y1, x0:x1]
    assert difference.max() <= 3 and edited.mean() < 0.05, (difference.max(), edited.mean())
    assert len(faces) == len(pinned["faces"])
    for face, pinned_face in zip(faces, pinned["faces"]):
        for key in ("age_before", "age_after", "strength"):
            assert face[key] == pytest.approx(pinned_face[key], abs=0.05), key
    assert (pinned["photo"], pinned["request"]) == (FIXED_PHOTO, FIXED_REQUEST)


def write_fixed_answer() -> None:
    """Writes FIXED_ANSWER from the shipped model (WEIGHTS_DIR, default weights/): the answer's pixels over the
    region the edit changed, FIXED_MARGIN around it, with the region's box, the request and the faces' ages
    and strengths in the PNG's text."""
    from app.service import load_editor

    torch.set_num_threads(1)  # as the tests run (tests/conftest.py)
    torch.set_flush_denormal(True)
    with TestClient(create_app(Settings(), editor=load_editor(Settings.from_env()))) as client:
        upload, result, faces = fixed_answer(client)
    ys, xs = np.nonzero((result != upload).any(axis=2))
    height, width = upload.shape[:2]
    x0, y0 = max(0, int(xs.min()) - FIXED_MARGIN), max(0, int(ys.min()) - FIXED_MARGIN)
    x1, y1 = min(width, int(xs.max()) + 1 + FIXED_MARGIN), min(height, int(ys.max()) + 1 + FIXED_MARGIN)
    text = {
        "photo": FIXED_PHOTO,
        "request": FIXED_REQUEST,
        "box": [x0, y0, x1, y1],
        "faces": [{key: face[key] for key in ("age_before", "age_after", "strength")} for face in faces],
    }
    info = PngInfo()
    info.add_text("fixed_answer", json.dumps(text))
    Image.fromarray(result[y0:y1, x0:x1]).save(FIXED_ANSWER, optimize=True, pnginfo=info)
    print(f"wrote {FIXED_ANSWER} ({FIXED_ANSWER.stat().st_size} bytes): {text}")


def test_the_image_answer_reports_the_strength_applied(client, small_jpeg):
    response = post(client, "/v1/age", small_jpeg, years=30)
    strengths = [float(v) for v in response.headers["X-Edit-Strengths"].split(",")]
    assert len(strengths) == int(response.headers["X-Faces"]) and all(0.0 <= v <= 1.0 for v in strengths)


def test_age_json_describes_each_face(client, fixtures_dir):
    response = post(
        client,
        "/v1/age",
        (fixtures_dir / "frrepo_two_people.jpg").read_bytes(),
        years=-10,
        headers={"Accept": "application/json"},
    )
    body = response.json()
    assert len(body["faces"]) == 2
    for face in body["faces"]:
        assert len(face["box"]) == 4 and len(face["landmarks"]) == 5
        assert {"age_before", "age_after", "shift", "score"} <= set(face)
    assert (body["image"]["width"], body["image"]["height"]) == (1126, 661)
    assert from_base64(body["image"]).size == (1126, 661)


def test_largest_face_only(client, fixtures_dir):
    response = post(client, "/v1/age", (fixtures_dir / "frrepo_two_people.jpg").read_bytes(), years=10, faces="largest")
    assert response.headers["x-faces"] == "1"


def test_face_output_is_a_strip_of_aligned_faces(client, fixtures_dir, fake_editor):
    response = post(
        client, "/v1/age", (fixtures_dir / "frrepo_two_people.jpg").read_bytes(), years=10, output="face", format="png"
    )
    side = fake_editor.work_size
    assert opened(response.content).size == (2 * side, side)


@pytest.mark.parametrize("format_name, media_type", [("png", "image/png"), ("webp", "image/webp")])
def test_output_formats(client, small_jpeg, format_name, media_type):
    response = post(client, "/v1/age", small_jpeg, years=5, format=format_name)
    assert response.headers["content-type"] == media_type
    assert opened(response.content).format == format_name.upper()


def test_png_output_keeps_the_uploads_alpha(client, fixtures_dir):
    path = fixtures_dir / "fr_32bit_rgba.png"
    response = post(client, "/v1/age", path.read_bytes(), filename="face.png", years=10, format="png")
    result = opened(response.content)
    assert result.mode == "RGBA"
    np.testing.assert_array_equal(np.asarray(result)[:, :, 3], np.asarray(Image.open(path))[:, :, 3])


def test_exif_rotated_jpeg_comes_back_upright(client, upload_files, fake_editor, photo):
    response = post(
        client, "/v1/age", upload_files["exif_rotated_jpeg"], years=10, headers={"Accept": "application/json"}
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["image"]["width"], body["image"]["height"]) == (320, 240)
    (expected,) = fake_editor.aligner.detect(photo(SMALL_PHOTO))
    np.testing.assert_allclose(body["faces"][0]["box"], expected.box, atol=8)


@pytest.mark.parametrize("name", ["cmyk_jpeg", "png16", "palette_png", "grayscale_png", "webp", "heic"])
def test_every_supported_kind_of_photo_is_aged(client, upload_files, name):
    response = post(client, "/v1/age", upload_files[name], years=10)
    assert response.status_code == 200, response.text
    assert response.headers["x-faces"] == "1"
    assert opened(response.content).size == (320, 240)


def test_grayscale_fixture_is_aged(client, fixtures_dir):
    response = post(client, "/v1/age", (fixtures_dir / "skimage_camera.png").read_bytes(), years=10)
    assert response.status_code == 200 and response.headers["x-faces"] == "1"


# ---- series, faces, likelihood, samples -----------------------------------------------------------------------


def test_series_returns_a_strip_of_faces(client, small_jpeg, fake_editor):
    response = post(client, "/v1/age/series", small_jpeg, ages="10,30,50,70", format="png")
    assert response.status_code == 200
    assert response.headers["x-target-ages"] == "10.0,30.0,50.0,70.0"
    side = fake_editor.work_size
    strip = np.asarray(opened(response.content).convert("L"), np.int16)
    assert strip.shape == (side + label_band_height(side, side), 4 * side)


def test_series_strip_labels_each_age_beneath_its_frame(client, small_jpeg, fake_editor):
    strip = np.asarray(
        opened(post(client, "/v1/age/series", small_jpeg, ages="10,70", format="png").content).convert("L"), np.int16
    )
    side = fake_editor.work_size
    bands = [strip[side:, :side], strip[side:, side:]]
    assert all((band < 128).any() and (band > 200).mean() > 0.5 for band in bands)  # dark text on white
    assert np.abs(bands[0] - bands[1]).sum() > 0  # "age 10" is not "age 70"


def test_series_of_photos_as_json(client, small_jpeg):
    response = post(
        client, "/v1/age/series", small_jpeg, ages="20,60", output="photo", headers={"Accept": "application/json"}
    )
    body = response.json()
    assert [step["target_age"] for step in body["steps"]] == [20, 60]
    assert all(from_base64(step["image"]).size == (320, 240) for step in body["steps"])
    assert len(body["faces"]) == 1 and "age_before" in body["faces"][0]


def test_faces_finds_faces_with_ages(client, fixtures_dir):
    response = post(client, "/v1/faces", (fixtures_dir / "frrepo_two_people.jpg").read_bytes())
    body = response.json()
    assert (body["width"], body["height"]) == (1126, 661)
    assert len(body["faces"]) == 2
    assert all(face["age"] is not None and not face["too_small"] for face in body["faces"])


def test_faces_on_a_photo_without_faces_is_an_empty_list(client, fixtures_dir):
    response = post(client, "/v1/faces", (fixtures_dir / "skimage_coffee_noface.png").read_bytes())
    assert response.status_code == 200 and response.json()["faces"] == []


def test_faces_flags_a_face_too_small(client, tiny_face_png, min_face_40):
    (face,) = post(client, "/v1/faces", tiny_face_png).json()["faces"]
    assert face["too_small"] and face["age"] is None


def test_likelihood_reports_bits_per_dim(client, small_jpeg):
    body = post(client, "/v1/likelihood", small_jpeg).json()
    (face,) = body["faces"]
    assert 0 < face["bits_per_dim"] < 10
    if body["heldout_bits_per_dim"] is None:
        assert face["typicality"] is None
    else:
        assert face["typicality"] in ("typical", "unusual", "very unusual")


def test_likelihood_says_how_typical_against_heldout_faces(client, small_jpeg, fake_editor, monkeypatch):
    bits = post(client, "/v1/likelihood", small_jpeg).json()["faces"][0]["bits_per_dim"]
    info = fake_editor.info()
    monkeypatch.setattr(fake_editor, "info", lambda: {**info, "heldout_bits_per_dim": bits / 1.1})
    body = post(client, "/v1/likelihood", small_jpeg).json()
    (face,) = body["faces"]
    assert body["heldout_bits_per_dim"] == pytest.approx(bits / 1.1)
    assert face["difference_from_heldout"] == pytest.approx(bits - bits / 1.1, abs=1e-4)
    assert face["typicality"] == "unusual"


def test_samples_grid_is_repeatable_with_a_seed(model_client, age_editor):
    first = model_client.get("/v1/samples", params={"n": 4, "seed": 7, "temperature": 0.7})
    second = model_client.get("/v1/samples", params={"n": 4, "seed": 7, "temperature": 0.7})
    assert first.status_code == 200 and first.headers["x-seed"] == "7"
    assert first.content == second.content
    side = age_editor.resolution
    assert opened(first.content).size == (2 * side, 2 * side)


def test_samples_as_json(client):
    body = client.get("/v1/samples", params={"n": 3}, headers={"Accept": "application/json"}).json()
    assert len(body["images"]) == 3 and isinstance(body["seed"], int)


# ---- errors: bad uploads ------------------------------------------------------------------------------------


@pytest.fixture
def min_face_40(fake_editor, monkeypatch):
    """The editor refusing faces under 40 px, so that the 26 px face of `tiny_face_png` is too small."""
    monkeypatch.setattr(fake_editor.aligner, "min_face_size", 40)


@pytest.fixture(scope="module")
def tiny_face_png(photo) -> bytes:
    """A photo whose only face is about 26 pixels wide."""
    canvas = Image.new("RGB", (400, 400), (128, 128, 128))
    canvas.paste(Image.fromarray(photo("skimage_astronaut.png")).resize((120, 120), Image.LANCZOS), (150, 150))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, status, code",
    [
        ("truncated_jpeg", 400, "corrupt_image"),
        ("random_bytes", 415, "unsupported_image"),
        ("text", 415, "unsupported_image"),
        ("gif", 415, "unsupported_image"),
        ("bmp", 415, "unsupported_image"),
        ("png_bomb", 413, "too_many_pixels"),
    ],
)
def test_bad_files_get_clear_errors(client, upload_files, name, status, code):
    assert error_of(post(client, "/v1/age", upload_files[name], years=10), status) == code


@pytest.mark.parametrize(
    "route, fields", [("/v1/age/series", {"ages": "30"}), ("/v1/faces", {}), ("/v1/likelihood", {})]
)
def test_every_upload_route_refuses_bad_files(client, upload_files, route, fields):
    assert error_of(post(client, route, upload_files["text"], **fields), 415) == "unsupported_image"


def test_no_face_is_422(client, fixtures_dir):
    response = post(client, "/v1/age", (fixtures_dir / "skimage_coffee_noface.png").read_bytes(), years=10)
    assert error_of(response, 422) == "no_face"
    assert "No face" in response.json()["error"]["message"]


def test_face_too_small_is_422(client, tiny_face_png, min_face_40):
    response = post(client, "/v1/age", tiny_face_png, years=10)
    assert error_of(response, 422) == "face_too_small"
    assert "too small" in response.json()["error"]["message"]


def test_an_edit_error_is_answered_with_the_status_and_code_it_carries(client, small_jpeg, fake_editor, monkeypatch):
    class Declined(EditError):
        status_code, code = 409, "declined"

    def decline(image, faces="all"):
        raise Declined("Not this photo.")

    monkeypatch.setattr(fake_editor, "find_faces", decline)
    response = post(client, "/v1/likelihood", small_jpeg)
    assert error_of(response, 409) == "declined"
    assert response.json()["error"]["message"] == "Not this photo."


@pytest.mark.parametrize(
    "code, photo, fields",
    [
        ("no_face", "skimage_coffee_noface.png", {"years": 10}),
        ("invalid_parameters", SMALL_PHOTO, {"years": 10, "target_age": 40}),
    ],
)
def test_an_error_example_on_docs_is_the_error_the_service_sends(client, fixtures_dir, code, photo, fields):
    responses = client.get("/openapi.json").json()["paths"]["/v1/age"]["post"]["responses"]
    example = responses["422"]["content"]["application/json"]["examples"][code]["value"]
    assert post(client, "/v1/age", (fixtures_dir / photo).read_bytes(), **fields).json() == example


def test_faces_from_24_px_are_edited(model_client, tiny_face_png):
    response = post(model_client, "/v1/age", tiny_face_png, years=10)
    assert response.status_code == 200 and response.headers["x-faces"] == "1"


def test_likelihood_without_a_face_is_422(client, fixtures_dir):
    response = post(client, "/v1/likelihood", (fixtures_dir / "skimage_coffee_noface.png").read_bytes())
    assert error_of(response, 422) == "no_face"


@pytest.fixture(scope="module")
def limited_client(fake_editor):
    with TestClient(create_app(Settings(max_upload_bytes=40_000, max_pixels=60_000), editor=fake_editor)) as client:
        yield client


def test_oversized_body_is_413_before_reading_it(limited_client, fixtures_dir):
    response = post(limited_client, "/v1/age", (fixtures_dir / "fr_obama.jpg").read_bytes(), years=10)
    assert error_of(response, 413) == "upload_too_large"


def test_oversized_streamed_body_is_413(limited_client):
    def chunks():
        yield (
            b'--edge\r\nContent-Disposition: form-data; name="years"\r\n\r\n5\r\n'
            b'--edge\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        )
        for _ in range(200):
            yield bytes(1024)
        yield b"\r\n--edge--\r\n"

    response = limited_client.post(
        "/v1/age", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=edge"}
    )
    assert error_of(response, 413) == "upload_too_large"


def test_photo_just_over_the_byte_limit_is_413(limited_client):
    response = post(limited_client, "/v1/age", bytes(40_001), years=10)
    assert error_of(response, 413) == "upload_too_large"
    assert "limit" in response.json()["error"]["message"]


def test_photo_with_too_many_pixels_is_413(limited_client, small_jpeg):
    assert error_of(post(limited_client, "/v1/age", small_jpeg, years=10), 413) == "too_many_pixels"


def test_malformed_multipart_body_is_400(client):
    response = client.post(
        "/v1/age",
        content=b"--edge\r\ngarbage without headers",
        headers={"Content-Type": "multipart/form-data; boundary=edge"},
    )
    assert response.status_code in (400, 422)
    assert response.json()["error"]["message"]


def test_uploads_are_never_written_to_disk(client, fixtures_dir, monkeypatch):
    def no_disk(*args, **kwargs):
        raise AssertionError("an upload was spooled to disk")

    for name in ("TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    photo_png = io.BytesIO()
    Image.open(fixtures_dir / "fr_obama.jpg").save(photo_png, format="PNG", compress_level=0)
    assert len(photo_png.getvalue()) > 2 * 1024 * 1024
    response = post(client, "/v1/age", photo_png.getvalue(), filename="big.png", years=10)
    assert response.status_code == 200, response.text


def test_nothing_of_the_upload_reaches_the_logs(client, small_jpeg, caplog):
    caplog.set_level(logging.DEBUG)
    response = post(
        client, "/v1/age", small_jpeg, filename="private-holiday.jpg", years=10, headers={"Accept": "application/json"}
    )
    assert response.status_code == 200
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "private-holiday" not in logged
    assert response.json()["image"]["data"][:40] not in logged


# ---- errors: bad parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields",
    [
        {"years": 10, "target_age": 40},
        {},
        {"years": "ten"},
        {"years": "nan"},
        {"years": 500},
        {"target_age": -5},
        {"years": 10, "faces": "some"},
        {"years": 10, "output": "video"},
        {"years": 10, "format": "gif"},
        {"years": 10, "colour": "red"},
    ],
)
def test_bad_parameters_are_422(client, small_jpeg, fields):
    assert error_of(post(client, "/v1/age", small_jpeg, **fields), 422) == "invalid_parameters"


@pytest.mark.parametrize("not_given", ["", "null"])
def test_an_empty_or_null_field_is_not_given(client, small_jpeg, not_given):
    """What a form sends for a field left as it is on /docs: years=30 with target_age=null edits."""
    response = post(client, "/v1/age", small_jpeg, years=30, target_age=not_given)
    assert response.status_code == 200, response.text
    assert response.headers["X-Age-Shift"].startswith("30")


def test_both_years_and_target_age_says_so(client, small_jpeg):
    response = post(client, "/v1/age", small_jpeg, years=10, target_age=40)
    assert "Give exactly one of years and target_age" in response.json()["error"]["message"]


def test_target_age_outside_the_models_range_is_422(client, small_jpeg, fake_editor):
    too_old = fake_editor.age_range[1] + 5
    if too_old > 120:
        pytest.skip("the model's age range reaches the form's own limit")
    response = post(client, "/v1/age", small_jpeg, target_age=too_old)
    assert error_of(response, 422) == "target_age_out_of_range"


def test_missing_image_is_422(client):
    response = client.post("/v1/age", data={"years": "10"}, files={"other": ("a.txt", b"x")})
    assert error_of(response, 422) == "invalid_parameters"
    assert "image" in response.json()["error"]["message"]


@pytest.mark.parametrize("ages", ["", "10,abc", "10,20,30,40,50,60,70,80,90", "200"])
def test_bad_series_ages_are_422(client, small_jpeg, ages):
    assert error_of(post(client, "/v1/age/series", small_jpeg, ages=ages), 422) == "invalid_parameters"


@pytest.mark.parametrize("params", [{"n": 0}, {"n": 1000}, {"temperature": -1}, {"seed": -3}, {"format": "bmp"}])
def test_bad_sample_parameters_are_422(client, params):
    assert error_of(client.get("/v1/samples", params=params), 422) == "invalid_parameters"


def test_unknown_route_is_a_json_404(client):
    assert error_of(client.get("/v1/nothing"), 404) == "not_found"


# ---- concurrency, keys, CORS, unexpected errors --------------------------------------------------------------


def test_requests_beyond_the_queue_get_503_with_retry_after(fake_editor, small_jpeg):
    busy_app = create_app(Settings(max_concurrency=1, max_queue=0), editor=fake_editor)
    with TestClient(busy_app) as client, busy_app.state.service.gate.slot():
        response = post(client, "/v1/age", small_jpeg, years=10)
        assert error_of(response, 503) == "busy"
        assert int(response.headers["retry-after"]) > 0
        assert client.get("/healthz").status_code == 200


def test_a_request_runs_the_model_in_a_thread_that_flushes_denormal_floats(fake_editor):
    """Denormals cost the CPU many times a normal float's time; the setting is per thread, so the gate makes
    it in the worker thread that holds the slot."""
    gate_app = create_app(Settings(max_concurrency=1, max_queue=0), editor=fake_editor)
    seen = []

    def in_a_worker() -> None:
        torch.set_flush_denormal(False)
        tiny = torch.tensor([1e-39])
        seen.append((tiny * 1.0).item() != 0.0)  # before: denormals kept
        with gate_app.state.service.gate.slot():
            seen.append((tiny * 1.0).item() == 0.0)  # inside the slot: flushed

    worker = threading.Thread(target=in_a_worker)
    worker.start()
    worker.join(30)
    assert seen == [True, True]


def test_waiting_requests_run_when_a_slot_frees(fake_editor, small_jpeg):
    queued_app = create_app(Settings(max_concurrency=1, max_queue=1), editor=fake_editor)
    statuses = []
    with TestClient(queued_app) as client:
        slot = queued_app.state.service.gate.slot()
        slot.__enter__()
        waiting = threading.Thread(
            target=lambda: statuses.append(post(client, "/v1/age", small_jpeg, years=10).status_code)
        )
        waiting.start()
        deadline = time.monotonic() + 10
        while queued_app.state.service.gate.admitted < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert error_of(post(client, "/v1/faces", small_jpeg), 503) == "busy"
        slot.__exit__(None, None, None)
        waiting.join(60)
    assert statuses == [200]


def test_api_keys_are_required_on_v1_routes_only(fake_editor):
    keyed_app = create_app(Settings(api_keys=("first-key", "second-key")), editor=fake_editor)
    with TestClient(keyed_app) as client:
        missing = client.get("/v1/model")
        assert error_of(missing, 401) == "unauthorized"
        assert missing.headers["www-authenticate"] == "Bearer"
        assert client.get("/v1/model", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/v1/model", headers={"Authorization": "Bearer second-key"}).status_code == 200
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200


def test_cors_allows_the_configured_origins(fake_editor):
    cors_app = create_app(Settings(cors_origins=("https://app.example",)), editor=fake_editor)
    with TestClient(cors_app) as client:
        preflight = client.options(
            "/v1/age", headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        )
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        answer = client.get("/v1/model", headers={"Origin": "https://app.example"})
        assert "X-Ages-Before" in answer.headers["access-control-expose-headers"]
        other = client.get("/v1/model", headers={"Origin": "https://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers


def test_unexpected_errors_are_a_generic_500_that_logs_only_the_type(
    client, small_jpeg, fake_editor, monkeypatch, caplog
):
    def broken(*args, **kwargs):
        raise RuntimeError("details that must not be logged")

    monkeypatch.setattr(fake_editor, "age_photo", broken)
    response = post(client, "/v1/age", small_jpeg, years=10)
    assert error_of(response, 500) == "internal_error"
    assert "details" not in response.text
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "RuntimeError" in logged and "details that must not be logged" not in logged


# ---- settings -------------------------------------------------------------------------------------------------


def test_settings_come_from_the_environment():
    settings = Settings.from_env(
        {
            "WEIGHTS_DIR": "/models/age",
            "MAX_UPLOAD_BYTES": "1000",
            "MAX_PIXELS": "2000",
            "DEVICE": "CPU",
            "TORCH_THREADS": "3",
            "DETAIL_STAGE": "off",
            "MAX_CONCURRENCY": "4",
            "MAX_QUEUE": "0",
            "API_KEYS": "one, two,,",
            "CORS_ORIGINS": "https://a.example",
            "MIN_FACE_SIZE": "64",
            "DETECT_MAX_SIDE": "1024",
            "DETECT_SECOND_PASS_SIDE": "2000",
            "MAX_FACES": "4",
            "WORK_BUDGET_MEGAPIXELS": "10",
            "MAX_UPLOADING_BYTES": "5000",
            "BODY_IDLE_TIMEOUT": "3",
            "BODY_TIMEOUT": "30",
            "MAX_HEADER_BYTES": "4096",
            "HEADER_TIMEOUT": "2",
            "KEEP_ALIVE_TIMEOUT": "7",
            "MAX_CONNECTIONS": "9",
        }
    )
    assert settings == Settings(
        weights_dir=Path("/models/age"),
        max_upload_bytes=1000,
        max_pixels=2000,
        device="cpu",
        torch_threads=3,
        detail_stage=False,
        max_concurrency=4,
        max_queue=0,
        api_keys=("one", "two"),
        cors_origins=("https://a.example",),
        min_face_size=64,
        detect_max_side=1024,
        detect_second_pass_side=2000,
        max_faces=4,
        work_budget_megapixels=10,
        max_uploading_bytes=5000,
        body_idle_timeout=3,
        body_timeout=30,
        max_header_bytes=4096,
        header_timeout=2,
        keep_alive_timeout=7,
        max_connections=9,
    )


def test_the_detail_stage_setting_reads_on_and_off_and_refuses_anything_else():
    assert Settings.from_env({"DETAIL_STAGE": " On "}).detail_stage is True
    assert Settings.from_env({"DETAIL_STAGE": "0"}).detail_stage is False
    with pytest.raises(SettingsError, match="DETAIL_STAGE must be on or off"):
        Settings.from_env({"DETAIL_STAGE": "maybe"})


def test_with_the_detail_stage_off_the_service_loads_the_editor_without_it(age_editor):
    from app.service import load_editor

    if age_editor.detail_stage is None:
        pytest.skip("the weights have no detail stage (detail_config.json)")
    editor = load_editor(replace(Settings.from_env(), detail_stage=False))
    assert editor.detail_stage is None and editor.info()["detail"] is None


def test_settings_without_environment_are_the_defaults():
    assert Settings.from_env({}) == Settings()


def test_threads_per_edit_divide_the_cores_among_the_edits_that_run_at_once(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert Settings(max_concurrency=2).threads_per_edit() == 4
    assert Settings(max_concurrency=16).threads_per_edit() == 1
    assert Settings(torch_threads=3, max_concurrency=2).threads_per_edit() == 3


def torch_threads_of_a_new_thread() -> int:
    """The process's torch thread count, as a thread started now takes it (torch.set_num_threads stores it for
    the whole process; a thread that has run torch before keeps the count it started with)."""
    counts: list[int] = []
    thread = threading.Thread(target=lambda: counts.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return counts[0]


def test_an_app_started_inside_another_program_leaves_its_torch_threads_alone(fake_editor):
    threads = torch_threads_of_a_new_thread()
    with TestClient(create_app(Settings(torch_threads=threads + 2), editor=fake_editor)) as client:
        assert client.get("/readyz").status_code == 200
    assert torch_threads_of_a_new_thread() == threads
    assert torch.get_num_threads() == threads


def test_the_served_app_sets_its_process_torch_threads_to_the_threads_per_edit(fake_editor, monkeypatch):
    """`app.main:app` is what app.serve, uvicorn and the image serve; its start is run here, with nothing to load
    and without touching this process's threads."""
    asked: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", asked.append)
    monkeypatch.setattr(app.main.app.state.service, "editor", fake_editor)
    with TestClient(app.main.app):
        pass
    assert asked == [app.main.app.state.settings.threads_per_edit()]


@pytest.mark.parametrize(
    "environ", [{"MAX_UPLOAD_BYTES": "lots"}, {"MAX_CONCURRENCY": "0"}, {"DEVICE": "gpu"}, {"MAX_QUEUE": "-1"}]
)
def test_bad_settings_name_the_variable(environ):
    with pytest.raises(SettingsError, match=next(iter(environ))):
        Settings.from_env(environ)


def test_auto_device_takes_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert Settings(device="auto").torch_device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Settings(device="auto").torch_device().type == "cpu"


if __name__ == "__main__":  # python -m tests.app.test_api: regenerates FIXED_ANSWER (see its test)
    write_fixed_answer()
