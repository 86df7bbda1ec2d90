"""The web page in a real browser: paint a label map, upload a photo, see both translations.

Drives Debian's Chromium through Playwright against the ``live_server`` fixture, a real
uvicorn serving tiny models. Screenshots land in ``tests/artifacts/`` for a person to look at.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.browser

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
ARTIFACTS = Path(__file__).parent / "artifacts"
TIMEOUT_MS = 15_000

# True once the output image shows a finished translation newer than ``previous`` (a src).
OUTPUT_READY = """(previous) => {
    const frame = document.querySelector('[data-testid="output-image"]').parentElement;
    const image = document.querySelector('[data-testid="output-image"]');
    const error = document.querySelector('[data-testid="error-message"]');
    if (!error.hidden) return true;
    return frame.getAttribute("aria-busy") === "false" && !image.hidden
        && image.complete && image.naturalWidth > 0 && image.src !== previous;
}"""

# How many pixels of each color the paint canvas holds, packed as 0xRRGGBB (-1: not opaque).
CANVAS_HISTOGRAM = """() => {
    const canvas = document.querySelector('[data-testid="paint-canvas"]');
    const { data } = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
    const counts = {};
    for (let i = 0; i < data.length; i += 4) {
        const key = data[i + 3] === 255 ? (data[i] << 16) | (data[i + 1] << 8) | data[i + 2] : -1;
        counts[key] = (counts[key] || 0) + 1;
    }
    return counts;
}"""


def _skip_or_fail(reason: str) -> None:
    """Skip where the browser is missing, but fail on CI, where it must be installed."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def browser_page():
    """A fresh Chromium page, 1280 x 900."""
    if not CHROMIUM.exists():
        _skip_or_fail(
            f"Debian's Chromium is not installed at {CHROMIUM} (apt-get install chromium)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _skip_or_fail("the playwright package is not installed (pip install -e '.[dev]')")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def _drag(page, canvas_box: dict, points: list[tuple[float, float]]) -> None:
    """One mouse stroke through points given as fractions of the canvas's width and height."""

    def position(u: float, v: float) -> tuple[float, float]:
        return canvas_box["x"] + u * canvas_box["width"], canvas_box["y"] + v * canvas_box["height"]

    page.mouse.move(*position(*points[0]))
    page.mouse.down()
    for point in points[1:]:
        page.mouse.move(*position(*point), steps=6)
    page.mouse.up()


def _wait_for_output(page, previous: str | None) -> None:
    page.wait_for_function(OUTPUT_READY, arg=previous or "", timeout=TIMEOUT_MS)
    error = page.get_by_test_id("error-message")
    assert error.is_hidden(), f"the page shows an error: {error.inner_text()}"


def _screenshot(page, name: str) -> None:
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=ARTIFACTS / name, full_page=True, animations="disabled")


def _packed(color: list[int]) -> int:
    red, green, blue = color
    return (red << 16) | (green << 8) | blue


def _histogram(page) -> dict[int, int]:
    return {int(color): count for color, count in page.evaluate(CANVAS_HISTOGRAM).items()}


def _output_src(page) -> str | None:
    return page.get_by_test_id("output-image").get_attribute("src")


def test_page_translates_a_painted_label_map_and_an_uploaded_photo(
    live_server, browser_page, tmp_path
):
    from playwright.sync_api import expect

    page = browser_page
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(live_server)
    models = page.evaluate("() => fetch('/v1/models').then((response) => response.json())")
    labels = next(model for model in models["models"] if model["name"] == "labels")
    palette = {_packed(entry["color"]) for entry in labels["palette"]}

    # Label map: paint strokes with two classes, erase a little, flood-fill, translate.
    select = page.get_by_test_id("model-select")
    expect(select).to_be_enabled()
    select.select_option("labels")
    # The model details name the version served (a content hash of its files).
    expect(page.locator("#model-meta")).to_contain_text(f"Version {labels['version']}")
    # and what the model was trained on, as its spec says.
    expect(page.get_by_test_id("model-about")).to_have_text(labels["description"])
    canvas = page.get_by_test_id("paint-canvas")
    expect(canvas).to_be_visible()
    swatches = page.get_by_test_id("palette-swatch")
    expect(swatches).to_have_count(len(labels["palette"]))
    box = canvas.bounding_box()

    page.get_by_test_id("brush-size").fill("24")
    swatches.nth(1).click()
    _drag(page, box, [(0.08, 0.2), (0.35, 0.35), (0.6, 0.3), (0.9, 0.45)])
    swatches.nth(len(labels["palette"]) - 1).click()
    expect(swatches.nth(len(labels["palette"]) - 1)).to_have_attribute("aria-pressed", "true")
    _drag(page, box, [(0.15, 0.8), (0.5, 0.7), (0.85, 0.85)])
    page.get_by_test_id("tool-eraser").click()
    _drag(page, box, [(0.45, 0.75), (0.55, 0.75)])
    before_fill = _histogram(page)
    page.get_by_test_id("tool-fill").click()
    swatches.nth(0).click()
    page.mouse.click(box["x"] + 0.35 * box["width"], box["y"] + 0.35 * box["height"])
    after_fill = _histogram(page)

    assert set(after_fill) <= palette, "painting must leave only exact palette colors"
    first, second = (_packed(entry["color"]) for entry in labels["palette"][:2])
    assert before_fill[second] > 0, "the brush strokes left no pixels of the chosen class"
    assert after_fill[first] > before_fill[first], "the fill did not paint the first class"
    assert after_fill.get(second, 0) < before_fill[second]

    previous = _output_src(page)
    page.get_by_test_id("translate-button").click()
    _wait_for_output(page, previous)
    expect(page.get_by_test_id("download-link")).to_be_visible()
    _screenshot(page, "web_page_labels.png")

    # Photo: upload a picture through the file input; it translates on its own.
    select.select_option("photo")
    expect(page.get_by_test_id("drop-zone")).to_be_visible()
    expect(canvas).to_be_hidden()
    expect(page.get_by_test_id("model-about")).to_be_hidden()  # its spec says nothing
    ramp = np.linspace(0, 255, 96, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:64, None], 128), axis=-1)
    photo_path = tmp_path / "gradient.png"
    Image.fromarray(pixels.astype(np.uint8)).save(photo_path)
    page.get_by_test_id("file-input").set_input_files(photo_path)
    expect(page.get_by_test_id("input-preview")).to_be_visible()
    _wait_for_output(page, None)

    download = page.get_by_test_id("download-link")
    expect(download).to_be_visible()
    assert download.get_attribute("href").startswith("blob:")
    assert download.get_attribute("download").endswith(".png")
    expect(page.get_by_test_id("error-message")).to_be_hidden()
    _screenshot(page, "web_page_photo.png")
    assert script_errors == []


# -- the demo models' first view ------------------------------------------------------------------

MODELS = Path(__file__).resolve().parent.parent / "models"

# Size and luminance spread of the output image, read back through a canvas.
OUTPUT_SPREAD = """() => {
    const image = document.querySelector('[data-testid="output-image"]');
    const canvas = document.createElement("canvas");
    canvas.width = image.naturalWidth;
    canvas.height = image.naturalHeight;
    const context = canvas.getContext("2d");
    context.drawImage(image, 0, 0);
    const { data } = context.getImageData(0, 0, canvas.width, canvas.height);
    let sum = 0, squares = 0;
    for (let i = 0; i < data.length; i += 4) {
        const y = 0.299 * data[i] + 0.587 * data[i + 1] + 0.114 * data[i + 2];
        sum += y;
        squares += y * y;
    }
    const count = data.length / 4, mean = sum / count;
    const std = Math.sqrt(squares / count - mean * mean);
    return { width: canvas.width, height: canvas.height, std };
}"""


@pytest.fixture(scope="module")
def demo_server():
    """A real uvicorn serving the demo models of ``models/``, as ``make serve`` does."""
    from tests.conftest import LiveServer

    server = LiveServer(MODELS, env={"PIX2PIX_WATCH_MODELS": "false"})
    yield server.url
    server.stop()


def _file_histogram(model: str, url: str) -> dict[int, int]:
    """The colors of a served example file, counted as ``CANVAS_HISTOGRAM`` counts them."""
    path = MODELS / model / "examples" / url.rsplit("/", 1)[1]
    pixels = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3).astype(np.int64)
    values, counts = np.unique(
        pixels[:, 0] << 16 | pixels[:, 1] << 8 | pixels[:, 2], return_counts=True
    )
    return dict(zip(values.tolist(), counts.tolist(), strict=True))


def _example_button(page, entry: dict):
    return page.locator(f'[data-testid="example-button"][data-url="{entry["url"]}"]')


def _check_first_view(page, model: dict) -> None:
    """The model's first scene is in the canvas, mostly not background, and translated."""
    opening = _histogram(page)
    assert opening == _file_histogram(model["name"], model["scenes"][0]["url"])
    background = _packed(model["palette"][0]["color"])
    assert len(opening) >= 3 and opening.get(background, 0) < 0.5 * sum(opening.values())
    spread = page.evaluate(OUTPUT_SPREAD)
    assert (spread["width"], spread["height"]) == (256, 256)
    assert spread["std"] > 20, "the translation is a flat field"


def test_page_opens_on_a_painted_scene_and_translates_a_clicked_example(demo_server, browser_page):
    from playwright.sync_api import expect

    page = browser_page
    script_errors: list[str] = []
    page.on("pageerror", lambda error: script_errors.append(str(error)))
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(demo_server)
    listed = page.evaluate("() => fetch('/v1/models').then((response) => response.json())")
    models = {model["name"]: model for model in listed["models"]}
    facades = models["facades"]

    # The first view: the facades model with its first scene painted and translated.
    expect(page.get_by_test_id("model-select")).to_have_value("facades")
    _wait_for_output(page, None)
    _check_first_view(page, facades)
    buttons = page.get_by_test_id("example-button")
    expect(buttons).to_have_count(len(facades["scenes"]) + len(facades["examples"]))
    expect(_example_button(page, facades["scenes"][0])).to_have_attribute("aria-pressed", "true")
    _screenshot(page, "web_page_first_view.png")

    # "Scene" offers the model's next scene.
    previous = _output_src(page)
    page.get_by_test_id("tool-scene").click()
    _wait_for_output(page, previous)
    assert _histogram(page) == _file_histogram("facades", facades["scenes"][1]["url"])

    # A click on an example (a real label map) puts it in the canvas and translates it.
    example = facades["examples"][0]
    previous = _output_src(page)
    _example_button(page, example).click()
    _wait_for_output(page, previous)
    expect(_example_button(page, example)).to_have_attribute("aria-pressed", "true")
    assert _histogram(page) == _file_histogram("facades", example["url"])
    expect(page.get_by_test_id("tool-undo")).to_be_enabled()

    # Every label-map model opens on its own first scene.
    page.get_by_test_id("model-select").select_option("labels2photo")
    _wait_for_output(page, None)
    _check_first_view(page, models["labels2photo"])

    # The colorizer opens on its first photo; a click on another photo translates that one.
    page.get_by_test_id("model-select").select_option("gray2color")
    _wait_for_output(page, None)
    photos = models["gray2color"]["examples"]
    caption = page.locator("#input-caption")
    expect(caption).to_contain_text(photos[0]["url"].rsplit("/", 1)[1])
    previous = _output_src(page)
    _example_button(page, photos[-1]).click()
    _wait_for_output(page, previous)
    expect(caption).to_contain_text(photos[-1]["url"].rsplit("/", 1)[1])
    assert page.evaluate(OUTPUT_SPREAD)["std"] > 20
    _screenshot(page, "web_page_example_photo.png")
    assert script_errors == []
