"""The page at `/` in a real headless Chromium (Debian's, driven by Playwright) against a real server:
it draws what the API answers, scores an upload, interpolates, shows errors, fits a phone screen."""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, sync_playwright

from harness.servers import REPO, ServerProcess

CHROMIUM = "/usr/bin/chromium"  # Debian's package (Makefile TEST_DEBS); never a downloaded browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts"
# The red channel of a canvas, as 0..255 values (the page draws grayscale, so R = G = B).
CANVAS_PIXELS = """(el) => Array.from(el.getContext("2d").getImageData(0, 0, el.width, el.height).data
                                  .filter((_, i) => i % 4 === 0))"""
CANVAS_COLORS = """(el) => {
    const d = el.getContext("2d").getImageData(0, 0, el.width, el.height).data, colors = new Set();
    for (let i = 0; i < d.length; i += 4) colors.add(d[i] * 65536 + d[i + 1] * 256 + d[i + 2]);
    return colors.size; }"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: install Debian's chromium (make test-debs)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser: Browser, url: str, *, width: int = 1280, height: int = 900) -> Iterator[Page]:
    """The page loaded (its first drawings done); on leaving, no uncaught error may have happened in it."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(60_000)
    crashes: list[str] = []
    page.on("pageerror", lambda exc: crashes.append(str(exc)))
    page.goto(url + "/")
    page.wait_for_selector("body[data-loaded=true]")  # set when the first samples, score and strips are drawn
    yield page
    context.close()
    assert not crashes, f"uncaught errors in the page: {crashes}"


@contextlib.contextmanager
def page_at(url: str, *, height: int = 900) -> Iterator[Page]:
    """open_page in a browser of its own, for a test with its own server."""
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield from open_page(browser, url, height=height)
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser, server: ServerProcess) -> Iterator[Page]:
    yield from open_page(browser, server.url)


@pytest.fixture
def narrow_page(browser: Browser, server: ServerProcess) -> Iterator[Page]:
    yield from open_page(browser, server.url, width=375)


def pixels(page: Page, selector: str) -> np.ndarray:
    return np.asarray(page.locator(selector).evaluate(CANVAS_PIXELS), dtype=np.int64)


def as_bytes(values: list[float]) -> np.ndarray:
    """What a canvas holds for [0, 1] values: 8-bit gray."""
    return np.round(np.clip(np.asarray(values), 0, 1) * 255).astype(np.int64)


def png_file(image: np.ndarray, path: Path) -> Path:
    Image.fromarray((image.reshape(28, 28) * 255).round().astype(np.uint8), mode="L").save(path)
    return path


def shown_number(page: Page, selector: str, term: str) -> float:
    text = page.locator(selector).inner_text()
    match = re.search(re.escape(term) + r"[^\n]*\n\s*(-?[\d.]+)", text)
    assert match, f"no {term!r} in {text!r}"
    return float(match.group(1))


def test_static_files_are_served_and_anything_else_is_a_plain_404(server: ServerProcess) -> None:
    index = httpx.get(server.url + "/")
    assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/app.js">' in index.text
    script = httpx.get(server.url + "/static/app.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    for path in ("/static/nothing.js", "/static/..%2Fweb.py", "/static/%2E%2E%2Fapp.py"):
        missing = httpx.get(server.url + path)
        assert missing.status_code == 404, path
        assert missing.json()["error_type"] == "not_found"


def test_page_draws_the_samples_the_api_returns_and_the_model_card(page: Page, server: ServerProcess) -> None:
    card = httpx.get(server.url + "/model").json()
    expected = httpx.post(server.url + "/sample", json={"n": 16, "seed": 0, "temperature": 1.0}).json()["samples"]
    tiles = page.locator("#sample-grid button canvas")
    assert tiles.count() == 16
    for i in (0, 15):
        drawn = pixels(page, f"#sample-grid button:nth-child({i + 1}) canvas")
        assert drawn.std() > 1, "a blank tile"
        assert np.abs(drawn - as_bytes(expected[i])).max() <= 1
    assert "ready" in page.locator("#status").inner_text()
    assert page.locator("#model-name").inner_text() == "tiny-vae v1"
    text = page.locator("#model-card").inner_text()
    for fact in ("fashion-mnist", "onnxruntime on cpu", f"{card['latent']['active_units']} of 8", "5000 examples"):
        assert fact in text
    assert f"{card['calibration']['variants']['elbo']['threshold']:.1f}" in text


def test_uploaded_png_gets_the_apis_score_reconstruction_and_heatmap(
        page: Page, server: ServerProcess, test_images: np.ndarray, tmp_path: Path) -> None:
    path = png_file(test_images[0], tmp_path / "coat.png")
    item = base64.b64encode(path.read_bytes()).decode()
    expected = httpx.post(server.url + "/anomaly-score", json={"inputs": [item]}).json()["results"][0]
    page.set_input_files("#upload", str(path))
    page.wait_for_function("document.querySelector('#score').innerText.includes('coat.png')")
    assert shown_number(page, "#score", "Score") == pytest.approx(expected["score"], abs=0.06)
    assert shown_number(page, "#score", "Percentile") == pytest.approx(expected["percentile"], abs=0.06)
    verdict = page.locator("#score dd.good, #score dd.bad").inner_text()
    assert verdict == ("anomalous" if expected["is_anomaly"] else "normal")
    assert pixels(page, "#recon-view").std() > 1
    assert page.locator("#heatmap").evaluate(CANVAS_COLORS) > 20, "heatmap is not a per-pixel map"
    assert page.locator("#analyze-error").is_hidden()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)


def test_noise_is_scored_anomalous(page: Page) -> None:
    page.get_by_role("button", name="Noise").click()
    page.wait_for_function("document.querySelector('#score').innerText.includes('uniform noise')")
    assert page.locator("#score dd.bad").inner_text() == "anomalous"


def test_interpolation_strip_shows_the_apis_path_between_the_chosen_images(page: Page, server: ServerProcess) -> None:
    samples = httpx.post(server.url + "/sample", json={"n": 2, "seed": 0}).json()["samples"]
    expected = httpx.post(server.url + "/interpolate", json={"start": samples[0], "end": samples[1], "steps": 7,
                                                            "method": "slerp"}).json()["outputs"]
    page.select_option("#method", "slerp")
    page.fill("#steps", "7")
    page.get_by_role("button", name="Interpolate", exact=True).click()
    page.wait_for_function("document.querySelectorAll('#interp-strip canvas').length === 7")
    for i in (0, 3, 6):
        drawn = pixels(page, f"#interp-strip canvas:nth-child({i + 1})")
        assert np.abs(drawn - as_bytes(expected[i])).max() <= 1
    assert np.abs(pixels(page, "#interp-strip canvas:first-child") - pixels(page, "#interp-strip canvas:last-child")).max() > 10


def test_traversals_have_one_row_per_dimension_with_its_kl(page: Page, server: ServerProcess) -> None:
    kl = httpx.get(server.url + "/model").json()["latent"]["kl_per_dim"]
    rows = page.locator("#traversals li")
    assert rows.count() == len(kl) == 8
    for j, value in enumerate(kl):
        assert f"KL {value:.3f} nats" in rows.nth(j).inner_text()
        assert rows.nth(j).locator("canvas").count() == 9
    moved = pixels(page, "#traversals li:first-child canvas:first-child") - pixels(page, "#traversals li:first-child canvas:last-child")
    assert np.abs(moved).max() > 10, "moving an active dimension changed nothing"


def test_api_errors_are_shown_as_the_api_wrote_them(page: Page, tmp_path: Path) -> None:
    page.fill("#temperature", "0")
    page.get_by_role("button", name="Draw samples").click()
    error = page.locator("#sample-error")
    error.wait_for(state="visible")
    assert error.inner_text().startswith("422 invalid_input: temperature: Input should be greater than 0")
    page.fill("#temperature", "1")
    page.get_by_role("button", name="Draw samples").click()
    error.wait_for(state="hidden")

    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("not a picture")
    page.set_input_files("#upload", str(not_an_image))
    message = page.locator("#analyze-error")
    message.wait_for(state="visible")
    assert message.inner_text().startswith("422 invalid_input: inputs[0]: not a valid base64-encoded PNG or JPEG image")


def test_keyboard_alone_draws_new_samples_with_a_visible_focus(page: Page, server: ServerProcess) -> None:
    expected = httpx.post(server.url + "/sample", json={"n": 16, "seed": 5}).json()["samples"][0]
    page.focus("#seed")
    page.keyboard.press("Control+A")
    page.keyboard.type("5")
    page.keyboard.press("Enter")
    first = "#sample-grid button:first-child canvas"
    page.wait_for_function(f"""(expected) => {{
        const d = document.querySelector('{first}').getContext('2d').getImageData(0, 0, 28, 28).data;
        return expected.every((v, i) => Math.abs(d[4 * i] - v) <= 1); }}""", arg=as_bytes(expected).tolist())
    assert np.abs(pixels(page, first) - as_bytes(expected)).max() <= 1
    page.keyboard.press("Tab")  # temperature
    page.keyboard.press("Tab")  # count
    page.keyboard.press("Tab")  # the submit button
    focused = page.evaluate("[document.activeElement.textContent, getComputedStyle(document.activeElement).outlineWidth]")
    assert focused == ["Draw samples", "3px"]


def test_live_metrics_show_request_rate_and_latency(page: Page) -> None:
    row = page.locator("#live-table tbody tr", has=page.locator("th", has_text=re.compile(r"^/metrics$")))
    page.wait_for_function("""() => [...document.querySelectorAll('#live-table tbody tr')]
        .some(r => r.cells[0].textContent === '/metrics' && r.cells[1].textContent !== '—')""", timeout=15_000)
    rate, mean_ms = (float(row.locator("td").nth(i).inner_text()) for i in (0, 1))
    assert 0.1 < rate < 5, "the page scrapes every 2 s"
    assert 0 < mean_ms < 1000
    sample_total = page.locator("#live-table tbody tr", has=page.locator("th", has_text=re.compile(r"^/sample$")))
    assert int(sample_total.locator("td").nth(3).inner_text()) >= 1


def test_narrow_screen_has_no_horizontal_overflow(narrow_page: Page) -> None:
    page = narrow_page
    page.fill("#steps", "32")
    page.get_by_role("button", name="Interpolate", exact=True).click()
    page.wait_for_function("document.querySelectorAll('#interp-strip canvas').length === 32")
    widths = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth]")
    assert widths[0] <= widths[1] == 375
    tile = page.locator("#sample-grid button").first.bounding_box()
    assert tile and tile["width"] >= 40, "sample tiles too small to tap"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-page-375.png"), full_page=True)


def test_a_keyed_service_says_so_plainly_and_works_once_the_key_is_entered(browser: Browser, artifacts_dir: Path,
                                                                          tmp_path: Path) -> None:
    from harness.servers import start_server

    keyed = start_server(artifacts_dir, tmp_path, api_keys='["page-key"]')
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(keyed.url + "/")
        page.wait_for_function("document.getElementById('status').textContent.includes('401')")
        assert "missing API key" in page.locator("#status").inner_text()
        page.fill("#api-key", "page-key")
        page.press("#api-key", "Enter")  # change event: the key is kept for this tab and the page reloads
        page.wait_for_selector("body[data-loaded=true]")
        assert "ready" in page.locator("#status").inner_text()
        context.close()
    finally:
        keyed.stop()


def test_the_model_picker_lists_the_repository_and_routes_the_page_to_the_chosen_model(
        browser: Browser, artifacts_dir: Path, tmp_path: Path) -> None:
    import shutil

    from harness.servers import start_server

    root = tmp_path / "repo"
    for name in ("first", "second"):
        shutil.copytree(artifacts_dir, root / name / "1")
    proc = start_server(root, tmp_path, model_repository=root)
    try:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.goto(proc.url + "/")  # no default model: the page takes the first
        page.wait_for_selector("body[data-loaded=true]")
        assert page.locator("#model-name").inner_text() == "first v1"
        options = page.locator("#model-picker option")
        assert options.all_inner_texts() == ["first (v1)", "second (v1)"]
        with page.expect_request(lambda r: r.url.endswith("/models/second/sample")):
            page.select_option("#model-picker", "second")  # reloads with ?model=second
        page.wait_for_selector("body[data-loaded=true]")
        assert page.locator("#model-name").inner_text() == "second v1" and "model=second" in page.url
        context.close()
    finally:
        proc.stop()
