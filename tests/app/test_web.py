"""The web page and the API documentation in a real headless Chromium, on a desktop and a phone screen."""

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.align import stack_crops

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True, "has_touch": True, "device_scale_factor": 2}
SCREENS = {"desktop": DESKTOP, "phone": PHONE}
RESULT_SHOWN = """() => document.querySelector('#result:not([hidden]) .compare canvas.after') !== null
    && !document.getElementById('status').classList.contains('working')"""
IN_VIEW = """(selector) => {
    const box = document.querySelector(selector).getBoundingClientRect();
    return box.width > 0 && box.top >= 0 && box.left >= 0 && box.bottom <= innerHeight && box.right <= innerWidth;
}"""
# the part of the page left to see above the age control, which stays at the bottom of a phone's screen
UNCOVERED_BY_CONTROLS = """(selector) => {
    const box = document.querySelector(selector).getBoundingClientRect();
    const controls = document.getElementById('controls').getBoundingClientRect();
    return controls.left >= box.right || box.bottom <= controls.top + 1;
}"""

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (run `make browser`)")


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def open_page(browser, server_url: str, screen: dict, path: str = "/"):
    """A page in its own context; every request to another host fails, as it would offline."""
    context = browser.new_context(**screen)
    context.route(
        "**/*",
        lambda route: (
            route.continue_() if route.request.url.startswith(server_url + "/") else route.abort("internetdisconnected")
        ),
    )
    page = context.new_page()
    page.console_errors = []
    page.on("console", lambda message: message.type == "error" and page.console_errors.append(message.text))
    page.on("pageerror", lambda error: page.console_errors.append(str(error)))
    page.goto(server_url + path)
    return page


@pytest.fixture(params=list(SCREENS))
def page(request, browser, server_url):
    page = open_page(browser, server_url, SCREENS[request.param])
    page.screen = request.param
    yield page
    page.context.close()


@pytest.fixture
def desktop_page(browser, server_url):
    page = open_page(browser, server_url, DESKTOP)
    yield page
    page.context.close()


@pytest.fixture
def phone_page(browser, server_url):
    page = open_page(browser, server_url, PHONE)
    yield page
    page.context.close()


def upload(page, path) -> None:
    page.set_input_files("#photo", str(path))
    page.wait_for_function(RESULT_SHOWN, timeout=60_000)


def is_age_call(response) -> bool:
    return response.url.endswith("/v1/age")


def screenshot_array(page, selector: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(page.locator(selector).screenshot())).convert("RGB"), np.float32)


def test_result_is_in_view_beside_the_age_control(page, fixtures_dir):
    page.set_input_files("#photo", str(fixtures_dir / "frrepo_obama_small.jpg"))
    page.wait_for_function(RESULT_SHOWN, timeout=60_000)
    page.wait_for_function(IN_VIEW, arg="#closeups .compare", timeout=5_000)  # a smooth scroll ends
    assert page.evaluate(UNCOVERED_BY_CONTROLS, "#closeups .compare")
    assert page.evaluate(IN_VIEW, "#years")
    assert page.console_errors == []


def test_on_a_small_phone_the_result_is_scrolled_up_above_the_age_control(browser, server_url, fixtures_dir):
    page = open_page(browser, server_url, {**PHONE, "viewport": {"width": 360, "height": 640}})
    page.set_input_files("#photo", str(fixtures_dir / "frrepo_obama_small.jpg"))
    page.wait_for_function(RESULT_SHOWN, timeout=60_000)
    page.wait_for_function(UNCOVERED_BY_CONTROLS, arg="#closeups .compare", timeout=5_000)
    assert page.evaluate("window.scrollY") > 0
    assert page.evaluate(IN_VIEW, "#closeups .compare") and page.evaluate(IN_VIEW, "#years")
    page.context.close()


def test_closeup_is_large_on_both_screens(page, fixtures_dir):
    upload(page, fixtures_dir / "frrepo_obama_small.jpg")
    box = page.locator("#closeups .compare").bounding_box()
    assert box["width"] >= {"desktop": 400, "phone": 340}[page.screen]
    assert box["width"] == pytest.approx(box["height"], abs=2)


def test_touch_screens_are_not_told_to_drop_a_photo(page):
    dropping = page.get_by_text("Drop a photo here").is_visible()
    taking = page.get_by_text("Take a photo").is_visible()
    assert (dropping, taking) == ((True, False) if page.screen == "desktop" else (False, True))


def test_compare_divider_follows_a_drag(desktop_page, fixtures_dir):
    page = desktop_page
    upload(page, fixtures_dir / "frrepo_obama_small.jpg")
    box = page.locator("#closeups .compare").bounding_box()
    middle_y = box["y"] + box["height"] / 2

    def drag_to(fraction: float) -> np.ndarray:
        page.mouse.move(box["x"] + box["width"] / 2, middle_y)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * fraction, middle_y, steps=5)
        page.mouse.up()
        return screenshot_array(page, "#closeups .compare canvas.before")

    all_after = drag_to(0.0)
    assert int(page.input_value("#closeups .split")) <= 2
    all_before = drag_to(1.0)
    assert int(page.input_value("#closeups .split")) >= 98
    # the face itself changed, so the two ends of the drag show different pictures of it
    centre = (
        slice(all_after.shape[0] // 4, 3 * all_after.shape[0] // 4),
        slice(all_after.shape[1] // 4, 3 * all_after.shape[1] // 4),
    )
    assert np.abs(all_after[centre] - all_before[centre]).mean() > 2


def test_compare_divider_moves_with_a_tap_on_a_phone(phone_page, fixtures_dir):
    page = phone_page
    upload(page, fixtures_dir / "frrepo_obama_small.jpg")
    box = page.locator("#closeups .compare").bounding_box()
    page.touchscreen.tap(box["x"] + box["width"] * 0.15, box["y"] + box["height"] / 2)
    assert int(page.input_value("#closeups .split")) < 30
    clip = page.evaluate("getComputedStyle(document.querySelector('#closeups canvas.after')).clipPath")
    assert clip.startswith("inset(0px 0px 0px ") and clip != "inset(0px 0px 0px 50%)"


def test_several_faces_get_a_closeup_each_and_the_whole_photo_is_one_tap_away(desktop_page, fixtures_dir):
    page = desktop_page
    upload(page, fixtures_dir / "frrepo_two_people.jpg")
    assert page.locator("#closeups .compare").count() == 2
    assert page.locator("#closeups figcaption").nth(1).text_content().startswith("Face 2")
    page.click("#show-whole")
    assert page.is_visible("#whole .compare") and not page.is_visible("#closeups")
    width, height = Image.open(fixtures_dir / "frrepo_two_people.jpg").size
    assert page.evaluate("[...document.querySelectorAll('#whole canvas')].map(c => [c.width, c.height])") == [
        [width, height],
        [width, height],
    ]


def test_while_working_the_previous_result_stays_dimmed_with_a_spinner(desktop_page, fixtures_dir):
    page = desktop_page
    upload(page, fixtures_dir / "frrepo_obama_small.jpg")
    held = []
    page.route("**/v1/age", lambda route: held.append(route))
    page.focus("#years")
    page.keyboard.press("Home")
    page.wait_for_function("() => document.getElementById('result').classList.contains('working')")
    assert page.is_visible("#status .spinner")
    assert "younger" in page.text_content("#status")
    assert page.is_visible("#closeups .compare canvas.after")
    # held until the request is let through: the fade to dimmed finishes while it waits
    page.wait_for_function("() => parseFloat(getComputedStyle(document.getElementById('result')).opacity) < 0.5")
    for _ in range(1000):  # each call lets playwright deliver events, the held request among them
        if held:
            break
        page.evaluate("0")
    assert len(held) == 1
    held[0].continue_()
    page.unroute("**/v1/age")
    page.wait_for_function(RESULT_SHOWN, timeout=60_000)
    page.wait_for_function("() => getComputedStyle(document.getElementById('result')).opacity === '1'")


def test_the_years_range_follows_the_estimated_age(desktop_page, fixtures_dir, fake_editor):
    page = desktop_page
    with page.expect_response(lambda r: r.url.endswith("/v1/faces"), timeout=60_000) as faces_call:
        page.set_input_files("#photo", str(fixtures_dir / "frrepo_obama_small.jpg"))
    age = faces_call.value.json()["faces"][0]["age"]
    page.wait_for_function(RESULT_SHOWN, timeout=60_000)
    low, high = fake_editor.age_range
    assert int(page.get_attribute("#years", "min")) == int(np.ceil(low - age))
    assert int(page.get_attribute("#years", "max")) == int(np.floor(high - age))
    assert f"{round(age)} →" in page.text_content("#years-value")


def test_to_age_sends_a_target_age_and_names_the_download(desktop_page, fixtures_dir, fake_editor):
    page = desktop_page
    upload(page, fixtures_dir / "frrepo_obama_small.jpg")
    with page.expect_request(lambda r: r.url.endswith("/v1/age"), timeout=60_000) as age_call:
        page.check("input[name=mode][value=target]")
    assert b'name="target_age"' in age_call.value.post_data_buffer
    page.wait_for_function(RESULT_SHOWN, timeout=60_000)
    assert page.get_attribute("#years", "max") == str(round(fake_editor.age_range[1]))
    value = page.input_value("#years")
    assert page.get_attribute("#download", "download") == f"frrepo_obama_small-age-{value}.jpg"


def test_a_clamped_face_is_said_so(desktop_page, fixtures_dir, photo, fake_editor):
    """The range follows the largest face: taking it to the end of the range on the side of the other face
    (younger if the model reads the other face younger, else older) goes beyond what the other can."""
    image = photo("frrepo_two_people.jpg")
    faces = fake_editor.find_faces(image)
    crops = stack_crops(fake_editor.align(image, faces), fake_editor.resolution)
    largest, other = fake_editor.estimate_age(crops)[:2]
    key, end, suffix = ("Home", "youngest", "-years-younger.jpg") if other < largest else ("End", "oldest", "")
    page = desktop_page
    upload(page, fixtures_dir / "frrepo_two_people.jpg")
    with page.expect_response(is_age_call, timeout=60_000):
        page.focus("#years")
        page.keyboard.press(key)
    page.wait_for_function(RESULT_SHOWN, timeout=60_000)
    assert page.is_visible("#clamp-note")
    assert f"Face 2 stopped at the {end} age the model knows" in page.text_content("#clamp-note")
    assert page.get_attribute("#download", "download").endswith(suffix)


def test_a_face_the_guard_scaled_back_is_said_so(desktop_page, fixtures_dir):
    """An edit the likelihood guard scaled back says how far it went, from the answer's strength."""
    page = desktop_page
    upload(page, fixtures_dir / "frrepo_obama_small.jpg")
    page.evaluate(
        """() => {
            const real = window.fetch;
            window.fetch = async (...args) => {
                const response = await real(...args);
                if (!String(args[0]).endsWith("/v1/age")) return response;
                const body = await response.clone().json().catch(() => null);
                if (!body || !body.faces) return response;
                for (const face of body.faces) {
                    face.strength = 0.6;
                    face.age_after = face.age_before + 0.6 * (face.age_target - face.age_before);
                }
                return new Response(JSON.stringify(body), { status: response.status, headers: response.headers });
            };
        }"""
    )
    with page.expect_response(is_age_call, timeout=60_000):
        page.focus("#years")
        page.keyboard.press("End")
    page.wait_for_function(RESULT_SHOWN, timeout=60_000)
    note = page.text_content("#clamp-note")
    assert "60 % of the way" in note and "would no longer look like a real face" in note


def test_faces_the_service_did_not_edit_are_said_so(desktop_page, fixtures_dir, server_url):
    """The service's answer, with one face more reported as skipped, as a crowded photo would get it."""
    import httpx

    page = desktop_page
    photo = fixtures_dir / "frrepo_obama_small.jpg"
    answer = httpx.post(
        f"{server_url}/v1/age",
        files={"image": ("photo", photo.read_bytes())},
        data={"years": "20"},
        headers={"Accept": "application/json"},
        timeout=60,
    ).json()
    for face in answer["faces"]:  # as if the guard had let every edited face go the whole way
        face["strength"] = 1.0
    answer["skipped"] = [
        {
            "box": [1, 1, 20, 20],
            "landmarks": [[5, 5]] * 5,
            "score": 0.9,
            "reason": "too_small",
            "explanation": "smaller than the smallest face that can be edited",
        }
    ]
    page.route("**/v1/age", lambda route: route.fulfill(json=answer))
    upload(page, photo)
    assert page.text_content("#clamp-note") == (
        "1 more face was not edited: smaller than the smallest face that can be edited."
    )


def test_older_wording_and_download_name(desktop_page, fixtures_dir):
    page = desktop_page
    upload(page, fixtures_dir / "frrepo_obama_small.jpg")
    assert page.get_attribute("#download", "download") == "frrepo_obama_small-20-years-older.jpg"
    assert page.get_attribute("#download", "href").startswith("blob:")
    assert page.text_content("#years-value").startswith("+20 years")


def test_a_phone_photo_the_browser_cannot_show_is_shown_from_the_service(phone_page, tmp_path, upload_files):
    path = tmp_path / "phone.heic"
    path.write_bytes(upload_files["heic"])
    upload(phone_page, path)
    assert phone_page.locator("#closeups .compare").count() == 1
    assert phone_page.console_errors == []


def test_a_text_file_named_jpg_shows_only_the_services_message(page, tmp_path, server_url):
    import httpx

    path = tmp_path / "notes.jpg"
    path.write_text("name,age\nalice,34\n")
    expected = httpx.post(f"{server_url}/v1/faces", files={"image": ("notes.jpg", path.read_bytes())}).json()
    page.set_input_files("#photo", str(path))
    page.wait_for_selector("#status.error", timeout=60_000)
    assert page.text_content("#status").strip() == expected["error"]["message"]
    assert "browser" not in page.inner_text("body")
    assert not page.is_visible("#result")


def test_a_photo_without_a_face_shows_the_reason(page, fixtures_dir):
    page.set_input_files("#photo", str(fixtures_dir / "skimage_coffee_noface.png"))
    page.wait_for_selector("#status.error", timeout=60_000)
    assert "No face" in page.text_content("#status")
    assert not page.is_visible("#download")


def test_photo_dropped_on_the_page_is_aged(desktop_page, fixtures_dir):
    encoded = base64.b64encode((fixtures_dir / "frrepo_obama_small.jpg").read_bytes()).decode()
    desktop_page.evaluate(
        """(encoded) => {
        const bytes = Uint8Array.from(atob(encoded), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], "dropped.jpg", { type: "image/jpeg" }));
        document.getElementById("drop-zone").dispatchEvent(new DragEvent("drop", { dataTransfer: transfer }));
    }""",
        encoded,
    )
    desktop_page.wait_for_function(RESULT_SHOWN, timeout=60_000)
    assert desktop_page.get_attribute("#download", "download") == "dropped-20-years-older.jpg"


def test_series_is_a_labelled_row(desktop_page, fixtures_dir, fake_editor):
    page = desktop_page
    upload(page, fixtures_dir / "frrepo_obama_small.jpg")
    page.click("#series-button")
    page.wait_for_selector("#series:not([hidden]) img", timeout=60_000)
    labels = page.locator("#series-row figcaption").all_text_contents()
    assert len(labels) >= 4 and all(label.startswith("Age ") for label in labels)
    ages = [int(label.removeprefix("Age ")) for label in labels]
    assert ages == sorted(ages) and fake_editor.age_range[0] <= ages[0] and ages[-1] <= fake_editor.age_range[1]
    tops = {round(box["y"]) for box in (f.bounding_box() for f in page.locator("#series-row figure").all())}
    assert len(tops) == 1  # one row


def test_page_fits_a_phone_screen(phone_page):
    assert phone_page.evaluate("document.documentElement.scrollWidth") <= PHONE["viewport"]["width"]
    assert phone_page.get_attribute("#camera", "capture") == "user"
    assert phone_page.get_attribute("#photo", "accept") == "image/*"


@pytest.mark.parametrize("screen", list(SCREENS))
def test_api_docs_render_with_the_network_blocked(browser, server_url, screen):
    page = open_page(browser, server_url, SCREENS[screen], "/docs")
    page.wait_for_selector("#operations-editing-age_photo", timeout=30_000)
    assert page.locator(".opblock").count() >= 8
    page.goto(server_url + "/redoc")
    page.wait_for_selector("h2:has-text('Age the faces in a photo')", timeout=30_000)
    # ReDoc's footer shows its maker's logo from their site: the content policy refuses it, by design
    assert [e for e in page.console_errors if "cdn.redoc.ly/redoc/logo-mini.svg" not in e] == []
    page.context.close()


def test_try_it_out_on_age_works_with_its_defaults(browser, server_url, fixtures_dir):
    page = open_page(browser, server_url, DESKTOP, "/docs")
    page.click("#operations-editing-age_photo .opblock-summary")
    page.click("#operations-editing-age_photo button.try-out__btn")
    page.set_input_files("#operations-editing-age_photo input[type=file]", str(fixtures_dir / "frrepo_obama_small.jpg"))
    with page.expect_response(is_age_call, timeout=60_000) as call:
        page.click("#operations-editing-age_photo button.execute")
    assert call.value.status == 200, call.value.text()
    assert [round(face["shift"]) for face in call.value.json()["faces"]] == [30]
    assert page.console_errors == []
    page.context.close()
