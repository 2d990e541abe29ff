"""The README's screenshots of the page and the API docs, taken in headless Chromium with the shipped model.

.venv/bin/python docs/screenshots.py        # writes docs/screenshots/*.png
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.main import create_app  # noqa: E402  (after the path is set)
from app.service import load_editor  # noqa: E402
from app.settings import Settings  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
PHOTO = ROOT / "tests" / "fixtures" / "frrepo_two_people.jpg"
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
RESULT_SHOWN = """() => document.querySelector('#result:not([hidden]) .compare canvas.after') !== null
    && !document.getElementById('status').classList.contains('working')"""


def serve() -> tuple[str, uvicorn.Server]:
    settings = Settings.from_env()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(settings, editor=load_editor(settings)), log_level="warning"))
    threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{listener.getsockname()[1]}", server


def main() -> None:
    OUT.mkdir(exist_ok=True)
    url, server = serve()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        for name, screen in (("desktop", DESKTOP), ("phone", PHONE)):
            context = browser.new_context(**screen)
            # offline, as the service runs: every request to another host fails
            context.route(
                "**/*", lambda route: route.continue_() if route.request.url.startswith(url + "/") else route.abort()
            )
            page = context.new_page()
            page.goto(url)
            page.set_input_files("#photo", str(PHOTO))
            page.wait_for_function(RESULT_SHOWN, timeout=120_000)
            page.evaluate("() => new Promise((done) => setTimeout(done, 800))")  # the smooth scroll ends
            page.screenshot(path=OUT / f"{name}-closeups.png")
            if name == "desktop":
                page.click("#show-whole")
                page.screenshot(path=OUT / "desktop-whole-photo.png")
                page.click("#show-closeups")
                page.click("#series-button")
                page.wait_for_selector("#series:not([hidden]) img", timeout=120_000)
                page.locator("#series").screenshot(path=OUT / "desktop-series.png")
                page.goto(url + "/docs")
                page.wait_for_selector("#operations-editing-age_photo", timeout=30_000)
                page.screenshot(path=OUT / "docs-offline.png")
            context.close()
        browser.close()
    server.should_exit = True
    print("\n".join(str(p.relative_to(ROOT)) for p in sorted(OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
