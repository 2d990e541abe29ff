"""Caps and budgets under hostile load, through the service: faces per request, the work budget, API keys
before the body, and the bytes uploads in progress hold. The editor's own limits (detections that are not
faces, the result canvas) are tested in tests/model/test_editor_limits.py, the detector's second pass in
tests/model/test_align.py."""

import asyncio
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.body_limit import BodyLimitMiddleware
from app.main import create_app
from app.settings import Settings


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
