"""The web page in headless Chromium against a real uvicorn: classify, new samples, a rejected upload.

Needs Debian's ``chromium`` at /usr/bin/chromium (``.ci/run`` installs it); Playwright drives it and
never downloads a browser of its own.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.builders import CLASSES, VAE_IMAGE_SIZE, encode_image, noise_image
from tests.servers import uvicorn_server

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling home on a closed network.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 20_000  # generous: the CPU is shared with the server and other work
GRID_SIDE = 8 * (VAE_IMAGE_SIZE + 2) + 2  # 64 samples, 8 per row, make_grid's 2-pixel padding
TEXT_REJECTION = "Upload rejected: not an image in a supported format (JPEG, PNG, WebP, BMP, GIF)"


@pytest.fixture(scope="module")
def base_url(served_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with uvicorn_server(served_root, tmp_path_factory.mktemp("web") / "uvicorn.log") as (url, _ready):
        yield url


def require_chromium() -> None:
    # A failure, not a skip: CI must not pass without having run the page.
    assert CHROMIUM.is_file(), (f"{CHROMIUM} is missing: install Debian's chromium package "
                                "(apt-get install -y chromium, as .ci/run does); never `playwright install`")


def test_chromium_is_installed() -> None:
    require_chromium()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    require_chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                              headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser, base_url: str) -> Iterator[Page]:
    """The page, opened once its first grid of samples is shown."""
    context = browser.new_context(base_url=base_url)
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    try:
        with opened.expect_response("**/generate?n=64"):
            opened.goto("/")
        wait_for_grid(opened)
        yield opened
    finally:
        context.close()


def wait_for_image(page: Page, selector: str, width: int) -> None:
    """Wait until the img at ``selector`` shows a picture ``width`` pixels wide."""
    page.wait_for_function("([selector, width]) => document.querySelector(selector).naturalWidth === width",
                           arg=[selector, width])


def wait_for_grid(page: Page) -> None:
    wait_for_image(page, "#samples img", GRID_SIDE)


def shown_bytes(page: Page, selector: str) -> bytes:
    """The bytes behind an img's (blob) URL, as the page fetched them."""
    return bytes(page.evaluate(
        "async src => Array.from(new Uint8Array(await (await fetch(src)).arrayBuffer()))",
        page.locator(selector).get_attribute("src")))


def png_file(name: str = "flower.png") -> dict:
    return {"name": name, "mimeType": "image/png", "buffer": encode_image(noise_image(seed=5), "PNG")}


def test_uploaded_photo_shows_its_predictions(page: Page, base_url: str) -> None:
    upload = png_file()
    expected = httpx.post(f"{base_url}/predict", files={"file": ("flower.png", upload["buffer"])},
                          timeout=30).json()["predictions"]
    assert len(expected) == len(CLASSES)  # the default k: 5, or every class when fewer
    page.get_by_label("Drop a photo here, or click to choose one").set_input_files(upload)
    expect(page.locator("#predictions li")).to_have_count(len(CLASSES), timeout=TIMEOUT_MS)
    percents = [f"{100 * p['probability']:.1f}%" for p in expected]
    expect(page.locator("#predictions .label")).to_have_text([p["label"] for p in expected])
    expect(page.locator("#predictions .probability")).to_have_text(percents)
    widths = page.locator("#predictions .bar span").evaluate_all("bars => bars.map(b => b.style.width)")
    assert [float(width.removesuffix("%")) for width in widths] == [float(p[:-1]) for p in percents]
    expect(page.locator("#error")).to_be_hidden()
    wait_for_image(page, "#reconstruction", VAE_IMAGE_SIZE)
    for image in ("#preview", "#reconstruction", "#samples img"):
        assert page.locator(image).get_attribute("alt")


def test_new_samples_button_shows_a_new_grid(page: Page, base_url: str) -> None:
    image = page.locator("#samples img")
    before_src, before_seed = image.get_attribute("src"), page.locator("#seed").inner_text()
    before = shown_bytes(page, "#samples img")
    with page.expect_response("**/generate?n=64") as answer:
        page.click("#new-samples")
    response = answer.value
    assert response.status == 200
    seed = response.headers["x-seed"]
    expect(page.locator("#seed")).to_have_text(f"seed {seed}")
    expect(image).not_to_have_attribute("src", before_src)
    wait_for_grid(page)
    assert before_seed != f"seed {seed}"
    assert image.get_attribute("alt") == f"64 flowers generated by the VAE from seed {seed}"
    shown = shown_bytes(page, "#samples img")
    assert shown.startswith(b"\x89PNG") and shown != before
    # The seed on the page reproduces the grid it shows, before and after the click.
    for grid, shown_seed in ((shown, seed), (before, before_seed.removeprefix("seed "))):
        assert httpx.post(f"{base_url}/generate", params={"seed": shown_seed}, timeout=30).content == grid


def test_rejected_upload_shows_the_api_message(page: Page) -> None:
    page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo"})
    error = page.locator("#error")
    expect(error).to_be_visible(timeout=TIMEOUT_MS)
    expect(error).to_have_text(TEXT_REJECTION)
    expect(page.locator("#predictions li")).to_have_count(0)
    expect(page.locator("#result")).to_be_hidden()
    # Dropping a photo on the zone clears the message and classifies it.
    dropped = page.evaluate_handle(
        """b64 => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], "flower.png", {type: "image/png"}));
            return transfer;
        }""", base64.b64encode(png_file()["buffer"]).decode())
    page.dispatch_event("#drop", "drop", {"dataTransfer": dropped})
    expect(page.locator("#predictions li")).to_have_count(len(CLASSES), timeout=TIMEOUT_MS)
    expect(error).to_be_hidden()
