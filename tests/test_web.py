"""The web page in a real headless Chromium, talking to the service over HTTP."""
import base64
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from app.main import create_app
from app.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PHONE = {"width": 390, "height": 844}
AFTER_IMAGE_SHOWN = """() => {
    const after = document.getElementById("after");
    return after.src.startsWith("data:image/") && after.complete && after.naturalWidth > 0;
}"""

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (run `make browser`)")


@pytest.fixture(scope="module")
def server_url(age_editor):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(Settings(), editor=age_editor), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    listener.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server_url):
    page = browser.new_page(viewport=PHONE)
    page.console_errors = []
    page.on("console", lambda message: message.type == "error" and page.console_errors.append(message.text))
    page.goto(server_url)
    yield page
    page.close()


def is_age_call(response) -> bool:
    return response.url.endswith("/v1/age")


def test_upload_then_slider_shows_an_aged_photo(page, fixtures_dir):
    with page.expect_response(is_age_call) as upload_call:
        page.set_input_files("#photo", str(fixtures_dir / "frrepo_obama_small.jpg"))
    assert upload_call.value.ok
    page.wait_for_function(AFTER_IMAGE_SHOWN, timeout=60_000)
    assert page.get_attribute("#before", "src").startswith("blob:")

    with page.expect_response(is_age_call, timeout=60_000) as slider_call:
        page.focus("#years")
        page.keyboard.press("End")
    assert slider_call.value.ok
    assert page.text_content("#years-value") == "+50"
    page.wait_for_function("document.getElementById('after-caption').textContent.includes('+50')")
    page.wait_for_function(AFTER_IMAGE_SHOWN)

    assert page.evaluate("document.getElementById('after').naturalWidth") == 320
    assert "Estimated age" in page.text_content("#before-caption")
    assert page.get_attribute("#download", "href").startswith("data:image/jpeg;base64,")
    assert page.is_visible("#download")
    assert page.console_errors == []


def test_photo_dropped_on_the_page_is_aged(page, fixtures_dir):
    encoded = base64.b64encode((fixtures_dir / "frrepo_obama_small.jpg").read_bytes()).decode()
    page.evaluate("""(encoded) => {
        const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.jpg", { type: "image/jpeg" }));
        document.getElementById("drop-zone").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer }));
    }""", encoded)
    page.wait_for_function(AFTER_IMAGE_SHOWN, timeout=60_000)


def test_a_photo_without_a_face_shows_the_reason(page, fixtures_dir):
    page.set_input_files("#photo", str(fixtures_dir / "skimage_coffee_noface.png"))
    page.wait_for_selector("#status.error", timeout=60_000)
    assert "No face" in page.text_content("#status")
    assert not page.is_visible("#download")


def test_page_fits_a_phone_screen(page):
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    assert page.get_attribute("#camera", "capture") == "user"
    assert page.get_attribute("#photo", "accept") == "image/*"
