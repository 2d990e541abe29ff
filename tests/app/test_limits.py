"""Caps and budgets under hostile load: faces per request, the work budget, detections that are not faces,
faces the first detection pass misses, API keys before the body, and the bytes uploads in progress hold."""

import asyncio
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageDraw, ImageFilter

from app.body_limit import BodyLimitMiddleware
from app.main import create_app
from app.settings import Settings
from model.align import DetectedFace, FaceAligner
from model.editor import result_canvas


def png(image: np.ndarray | Image.Image) -> bytes:
    buffer = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def post(client, route, data: bytes, headers=None, **fields):
    return client.post(
        route,
        files={"image": ("photo.png", data, "application/octet-stream")},
        data={k: str(v) for k, v in fields.items()},
        headers=headers,
    )


@pytest.fixture(scope="module")
def mosaic(photo) -> bytes:
    """Nine copies of one portrait, three by three: nine faces of about 150 px."""
    portrait = photo("frrepo_obama_small.jpg")
    return png(np.concatenate([np.concatenate([portrait] * 3, axis=1)] * 3, axis=0))


def test_faces_beyond_the_cap_are_reported_as_skipped(age_editor, mosaic):
    with TestClient(create_app(Settings(max_faces=2), editor=age_editor)) as client:
        response = post(client, "/v1/age", mosaic, years=10)
        assert response.status_code == 200
        assert response.headers["x-faces"] == "2" and response.headers["x-faces-found"] == "9"
        assert response.headers["x-faces-skipped"] == "7"
        assert response.headers["x-faces-skipped-reasons"] == ",".join(["face_limit"] * 7)
        body = post(client, "/v1/age", mosaic, years=10, headers={"Accept": "application/json"}).json()
    assert len(body["faces"]) == 2 and body["faces_found"] == 9
    assert [s["reason"] for s in body["skipped"]] == ["face_limit"] * 7 and body["skipped"][0]["explanation"]


def test_a_series_beyond_the_work_budget_edits_the_largest_face_and_says_so(age_editor, fixtures_dir):
    two_people = (fixtures_dir / "frrepo_two_people.jpg").read_bytes()
    with TestClient(create_app(Settings(work_budget_megapixels=1), editor=age_editor)) as client:
        body = post(
            client,
            "/v1/age/series",
            two_people,
            ages="10,20,30,40,50,60,70,80",
            output="photo",
            headers={"Accept": "application/json"},
        ).json()
        ample = post(
            client, "/v1/age/series", two_people, ages="20", output="photo", headers={"Accept": "application/json"}
        ).json()
    assert len(body["faces"]) == 1 and body["faces_found"] == 2
    assert [s["reason"] for s in body["skipped"]] == ["work_budget"]
    assert (
        body["skipped"][0]["box"][2] - body["skipped"][0]["box"][0]
        <= body["faces"][0]["box"][2] - body["faces"][0]["box"][0]
    )
    assert len(ample["faces"]) == 2 and ample["skipped"] == []


@pytest.fixture(scope="module")
def portrait_with_a_dark_blur(photo):
    """A portrait beside a blurred dark object on a light wall, and a detection of the object as a face (the
    real face's landmarks moved onto it), as the detector gives for such backgrounds."""
    portrait = photo("frrepo_obama_small.jpg")
    wall = Image.new("RGB", (320, 240), (205, 195, 180))
    ImageDraw.Draw(wall).ellipse((110, 40, 210, 200), fill=(35, 30, 25))
    image = np.concatenate([portrait, np.asarray(wall.filter(ImageFilter.GaussianBlur(14)))], axis=1)
    return image


def test_a_detection_the_flow_finds_implausible_as_a_face_is_skipped(
    age_editor, portrait_with_a_dark_blur, monkeypatch
):
    (real,) = age_editor.aligner.detect(portrait_with_a_dark_blur[:, :320])
    offset = np.array([480.0, 120.0]) - real.landmarks.mean(0)
    false = DetectedFace(box=real.box + np.r_[offset, offset], landmarks=real.landmarks + offset, score=0.95)
    monkeypatch.setattr(age_editor.aligner, "detect", lambda image, smallest=20.0: [real, false])
    result = age_editor.age_photo(portrait_with_a_dark_blur, years=30)
    assert len(result.faces) == 1 and result.faces[0].face is real
    assert [s.reason for s in result.skipped] == ["not_a_face"] and result.skipped[0].face is false
    assert np.array_equal(result.image[:, 320:], portrait_with_a_dark_blur[:, 320:])


def test_real_faces_of_the_fixtures_lie_within_the_plausible_range(age_editor, photo):
    low, high = age_editor.plausible_bits_per_dim
    for name in ("fr_obama.jpg", "frrepo_two_people.jpg", "skimage_astronaut.png", "skimage_camera.png"):
        image = photo(name)
        plan = age_editor.plan_faces(image)
        assert plan.skipped == [] and len(plan.aligned) >= 1, name


def test_without_the_range_in_editor_json_every_detection_is_edited(age_editor, monkeypatch):
    monkeypatch.setattr(age_editor, "settings", {})
    assert age_editor.plausible_bits_per_dim is None


@pytest.fixture(scope="module")
def six_small_faces_on_a_large_photo(photo) -> np.ndarray:
    """Six faces of about 100 px on a 6000 x 4500 photo: 11 px on the 640 px copy detection first uses."""
    face = Image.fromarray(photo("frrepo_obama_small.jpg")).resize((212, 159), Image.LANCZOS)  # face ~100 px
    canvas = Image.new("RGB", (6000, 4500), (120, 125, 130))
    for index in range(6):
        canvas.paste(face, (600 + 1700 * (index % 3), 1200 + 1800 * (index // 3)))
    return np.asarray(canvas)


def test_a_second_larger_pass_finds_the_faces_the_shrunk_copy_misses(six_small_faces_on_a_large_photo):
    first_pass_only = FaceAligner(second_pass_side=0)
    assert len(first_pass_only.detect(six_small_faces_on_a_large_photo)) < 6
    faces = FaceAligner(second_pass_side=1600).detect(six_small_faces_on_a_large_photo)
    assert len(faces) == 6 and all(80 < f.size < 130 for f in faces)


def test_result_canvas_shrinks_to_the_pixel_limit_keeping_the_aspect_ratio():
    canvas, to_photo = result_canvas(np.zeros((300, 600, 3), np.uint8), 20_000)
    assert canvas.shape[0] * canvas.shape[1] <= 20_000 and canvas.shape[1] == 2 * canvas.shape[0]
    assert to_photo[0, 0] == pytest.approx(600 / canvas.shape[1])


# ---- keys and uploads, at the ASGI level: what the app reads of a body ------------------------------------


def http_scope(path: str, headers: dict[str, str]) -> dict:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "root_path": "",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
        "http_version": "1.1",
        "asgi": {"version": "3.0"},
    }


async def answer(app, scope, receive) -> tuple[int, dict, bytes]:
    sent = []

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    return start["status"], dict(start["headers"]), b"".join(m.get("body", b"") for m in sent[1:])


async def body_never_read():
    raise AssertionError("the body was read")


@pytest.mark.parametrize("path", ["/v1/age", "/v1/faces", "/metrics"])
def test_with_keys_a_request_without_one_is_401_before_its_body_is_read(fake_editor, path):
    keyed = create_app(Settings(api_keys=("k1",)), editor=fake_editor)
    status, headers, body = asyncio.run(
        answer(keyed, http_scope(path, {"content-length": "19000000"}), body_never_read)
    )
    assert status == 401 and b'"unauthorized"' in body and headers[b"connection"] == b"close"


def test_metrics_need_the_key_when_keys_are_set(fake_editor):
    with TestClient(create_app(Settings(api_keys=("k1",)), editor=fake_editor)) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer k1"}).status_code == 200


async def read_body(scope, receive, send):
    """An app that reads its whole body, then answers 200."""
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def limited(app=read_body, **overrides):
    options = dict(
        max_body_bytes=10_000,
        message="too large",
        max_uploading_bytes=5_000,
        idle_timeout=0.2,
        timeout=5.0,
        retry_after=5,
    )
    return BodyLimitMiddleware(app, **{**options, **overrides})


def test_uploads_beyond_the_bytes_in_progress_get_503_until_the_first_is_answered():
    async def scenario():
        middleware = limited(idle_timeout=5.0)
        release = asyncio.Event()

        async def slow_receive():
            if not release.is_set():
                await release.wait()
                return {"type": "http.request", "body": bytes(4000), "more_body": False}
            return {"type": "http.disconnect"}

        first = asyncio.create_task(answer(middleware, http_scope("/", {"content-length": "4000"}), slow_receive))
        await asyncio.sleep(0.05)
        second = await answer(middleware, http_scope("/", {"content-length": "2000"}), body_never_read)
        release.set()
        done = await first
        third = await answer(
            middleware,
            http_scope("/", {"content-length": "2000"}),
            lambda: asyncio.sleep(0, {"type": "http.request", "body": bytes(2000), "more_body": False}),
        )
        return second, done, third, middleware.uploading_bytes

    second, first, third, held_after = asyncio.run(scenario())
    assert second[0] == 503 and b'"uploads_busy"' in second[2] and second[1][b"retry-after"] == b"5"
    assert first[0] == 200 and third[0] == 200 and held_after == 0


def test_a_stalled_upload_is_closed_with_408():
    from starlette.exceptions import HTTPException

    async def stalls():
        await asyncio.sleep(60)

    with pytest.raises(HTTPException) as raised:
        asyncio.run(answer(limited(), http_scope("/", {"content-length": "100"}), stalls))
    assert raised.value.status_code == 408 and raised.value.headers["Connection"] == "close"
