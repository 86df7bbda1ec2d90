"""The HTTP service against a real uvicorn on 127.0.0.1: translation, errors, limits, batching."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import DESCRIPTION, PALETTE, LiveServer, palette_image


def png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def photo(height=37, width=53, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    return png_bytes(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def post(url, model, data, name="input.png", content_type="image/png", **params):
    return httpx.post(
        f"{url}/v1/models/{model}/translate",
        files={"image": (name, data, content_type)},
        params=params,
        timeout=60,
    )


def decoded(response) -> Image.Image:
    assert response.status_code == 200, response.text
    return Image.open(io.BytesIO(response.content))


def test_models_are_listed_with_their_contract(live_server):
    models = {m["name"]: m for m in httpx.get(f"{live_server}/v1/models").json()["models"]}
    assert set(models) == {"labels", "photo", "gray"}
    labels = models["labels"]
    assert labels["input_kind"] == "label_map" and labels["status"] == "ready"
    assert [p["name"] for p in labels["palette"]] == [p["name"] for p in PALETTE]
    assert models["gray"]["color_space"] == "lab"
    assert models["photo"]["train_size"] == 32 and models["photo"]["runtime"] == "torch"
    assert labels["description"] == DESCRIPTION and models["photo"]["description"] is None


@pytest.mark.parametrize("size", [(37, 53), (333, 517), (8, 8), (1, 300)])
def test_any_size_comes_back_the_same_size(live_server, size):
    response = post(live_server, "photo", photo(*size))
    image = decoded(response)
    assert image.size == (size[1], size[0]) and image.mode == "RGB"
    assert response.headers["x-model"] == "photo"
    assert float(response.headers["x-inference-ms"]) > 0


@pytest.mark.parametrize(
    "fmt,mime", [("png", "image/png"), ("jpeg", "image/jpeg"), ("webp", "image/webp")]
)
def test_output_formats(live_server, fmt, mime):
    response = post(live_server, "photo", photo(), format=fmt)
    assert response.headers["content-type"] == mime
    assert decoded(response).format == fmt.upper()


def test_fit_mode_returns_the_input_size(live_server):
    assert decoded(post(live_server, "photo", photo(90, 40), resize="fit")).size == (40, 90)


def test_label_maps_as_class_index_and_palette_color_pngs(live_server):
    ids = np.zeros((40, 60), dtype=np.uint8)
    ids[20:] = 1
    ids[5:15, 5:15] = 2
    by_index = decoded(post(live_server, "labels", png_bytes(ids, "L")))
    by_palette = decoded(post(live_server, "labels", _png(palette_image(ids))))
    colors = np.array([p["color"] for p in PALETTE], dtype=np.uint8)
    by_color = decoded(post(live_server, "labels", png_bytes(colors[ids])))
    assert by_index.size == by_palette.size == by_color.size == (60, 40)
    assert np.array_equal(np.asarray(by_index), np.asarray(by_color))
    assert np.array_equal(np.asarray(by_index), np.asarray(by_palette))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_colorizer_keeps_the_input_lightness(live_server):
    rng = np.random.default_rng(1)
    gray = rng.integers(0, 256, (40, 40), dtype=np.uint8)
    result = np.asarray(decoded(post(live_server, "gray", png_bytes(gray, "L"))).convert("L"))
    assert np.corrcoef(result.ravel().astype(float), gray.ravel().astype(float))[0, 1] > 0.95


@pytest.mark.parametrize("mode", ["RGBA", "P", "CMYK", "LA", "I;16", "L"])
def test_input_modes_are_converted(live_server, mode):
    base = Image.fromarray(np.full((20, 30, 3), 120, dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(np.full((20, 30), 30000, dtype=np.uint16))
        fmt = "PNG"
    else:
        image = base.convert(mode)
        fmt = "JPEG" if mode == "CMYK" else "PNG"
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    assert decoded(post(live_server, "photo", buffer.getvalue())).size == (30, 20)


def test_exif_orientation_is_applied(live_server):
    image = Image.fromarray(np.zeros((10, 24, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    assert decoded(post(live_server, "photo", buffer.getvalue())).size == (10, 24)


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares a huge image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


BAD_INPUTS = [
    ("not an image", lambda: b"hello, this is text", "photo", 415, "unsupported_media_type"),
    ("pdf bytes", lambda: b"%PDF-1.4\n%\xe2\xe3", "photo", 415, "unsupported_media_type"),
    ("truncated png", lambda: photo(64, 64)[:-300], "photo", 422, "corrupt_image"),
    ("empty file", lambda: b"", "photo", 422, "empty_image"),
    ("pixel bomb", lambda: bomb_png(60000, 60000), "photo", 413, "too_many_pixels"),
    ("side too long", lambda: bomb_png(5000, 10), "photo", 413, "too_many_pixels"),
    ("unknown model", lambda: photo(), "nope", 404, "model_not_found"),
    ("traversal name", lambda: photo(), "..", 404, None),
    ("encoded traversal", lambda: photo(), "..%2F..%2Fetc", 404, None),
    ("unknown label colors", lambda: photo(), "labels", 422, "invalid_input"),
    (
        "unknown class ids",
        lambda: png_bytes(np.full((8, 8), 9, dtype=np.uint8), "L"),
        "labels",
        422,
        "invalid_input",
    ),
]


@pytest.mark.parametrize("name,make,model,status,code", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_get_clear_json_errors(live_server, name, make, model, status, code):
    response = post(live_server, model, make())
    assert response.status_code == status, response.text
    if code is not None:
        body = response.json()
        assert body["error"]["code"] == code and body["error"]["message"]
    # And the server keeps serving.
    assert post(live_server, "photo", photo()).status_code == 200


def test_missing_or_misnamed_field_is_422(live_server):
    response = httpx.post(
        f"{live_server}/v1/models/photo/translate", files={"picture": ("a.png", photo())}
    )
    assert response.status_code == 422
    assert "body.image" in response.json()["error"]["message"]
    response = httpx.post(f"{live_server}/v1/models/photo/translate", params={"format": "gif"})
    assert response.status_code == 422


def test_oversized_upload_is_refused_from_its_declared_length(live_server):
    response = post(live_server, "photo", b"\0" * (3 * 1024 * 1024))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_oversized_chunked_upload_is_refused_while_streaming(live_server):
    boundary = "xyz"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()

    def body():  # no Content-Length: the server must count as it reads
        yield head
        for _ in range(64):
            yield b"\0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        f"{live_server}/v1/models/photo/translate",
        content=body(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
        timeout=60,
    )
    assert response.status_code == 413


def test_health_ready_and_metrics(live_server):
    assert httpx.get(f"{live_server}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{live_server}/readyz").json()
    assert ready["ready"] and set(ready["models"]) == {"labels", "photo", "gray"}
    post(live_server, "photo", photo())
    text = httpx.get(f"{live_server}/metrics").text
    for name in (
        "pix2pix_requests_total",
        "pix2pix_request_seconds_bucket",
        "pix2pix_batch_size_bucket",
        "pix2pix_queue_depth",
        "pix2pix_model_load_seconds",
    ):
        assert name in text


def batch_counts(url: str) -> tuple[float, float]:
    """(batches, inputs) run so far for the photo model, from /metrics."""
    batches = inputs = 0.0
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith('pix2pix_batch_size_count{model="photo"}'):
            batches = float(line.split()[-1])
        if line.startswith('pix2pix_batch_size_sum{model="photo"}'):
            inputs = float(line.split()[-1])
    return batches, inputs


def test_concurrent_requests_are_batched_and_equal_unbatched_results(live_server):
    images = [photo(48, 64, seed=i) for i in range(12)]
    alone = [np.asarray(decoded(post(live_server, "photo", image))) for image in images]
    batches_before, inputs_before = batch_counts(live_server)

    async def burst():
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{live_server}/v1/models/photo/translate",
                        files={"image": ("a.png", image, "image/png")},
                    )
                    for image in images
                )
            )

    responses = asyncio.run(burst())
    batches_after, inputs_after = batch_counts(live_server)
    assert inputs_after - inputs_before == 12
    assert batches_after - batches_before < 12  # some requests shared a batch
    for response, expected in zip(responses, alone, strict=True):
        together = np.asarray(decoded(response)).astype(int)
        assert np.abs(together - expected.astype(int)).max() <= 1


def test_web_page_and_openapi_are_served(live_server):
    page = httpx.get(live_server + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    schema = httpx.get(live_server + "/openapi.json").json()
    translate = schema["paths"]["/v1/models/{name}/translate"]["post"]
    assert {"200", "404", "413", "415", "422", "503"} <= set(translate["responses"])
    assert "image/png" in translate["responses"]["200"]["content"]


@pytest.fixture(scope="module")
def keyed_server(tiny_models):
    server = LiveServer(tiny_models, env={"PIX2PIX_API_KEY": "s3cret-key"})
    yield server.url
    server.stop()


def test_api_key_is_required_when_set(keyed_server):
    assert post(keyed_server, "photo", photo()).status_code == 401
    wrong = httpx.post(
        f"{keyed_server}/v1/models/photo/translate",
        files={"image": ("a.png", photo(), "image/png")},
        headers={"X-API-Key": "s3cret-kez"},
    )
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    for headers in ({"X-API-Key": "s3cret-key"}, {"Authorization": "Bearer s3cret-key"}):
        ok = httpx.post(
            f"{keyed_server}/v1/models/photo/translate",
            files={"image": ("a.png", photo(), "image/png")},
            headers=headers,
        )
        assert ok.status_code == 200
    # Listing and health stay open.
    assert httpx.get(f"{keyed_server}/v1/models").status_code == 200


def test_broken_model_is_unavailable_while_others_serve(tiny_models, tmp_path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    (models / "labels" / "generator.safetensors").write_bytes(b"garbage")
    shutil.rmtree(models / "gray")
    (models / "gray").mkdir()  # no files at all
    server = LiveServer(models)
    try:
        ready = httpx.get(f"{server.url}/readyz").json()
        assert ready["ready"] is True
        assert ready["models"]["labels"]["ready"] is False
        assert "cannot read weights" in ready["models"]["labels"]["error"]
        assert ready["models"]["gray"]["ready"] is False
        listed = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
        assert listed["labels"]["status"] == "unavailable" and listed["labels"]["error"]
        response = post(server.url, "labels", photo())
        assert (
            response.status_code == 503 and response.json()["error"]["code"] == "model_unavailable"
        )
        assert post(server.url, "photo", photo()).status_code == 200
    finally:
        server.stop()


def test_full_queue_answers_503_with_retry_after(tiny_models):
    server = LiveServer(
        tiny_models,
        env={"PIX2PIX_QUEUE_SIZE": "1", "PIX2PIX_MAX_BATCH": "1", "PIX2PIX_MAX_WAIT_MS": "0"},
    )
    big = photo(480, 480)

    async def flood():
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        f"{server.url}/v1/models/photo/translate",
                        files={"image": ("a.png", big, "image/png")},
                    )
                    for _ in range(12)
                )
            )

    try:
        statuses = [r.status_code for r in asyncio.run(flood())]
        rejected = [r for r in asyncio.run(flood()) if r.status_code == 503]
        assert set(statuses) <= {200, 503}
        assert 200 in statuses
        assert rejected and rejected[0].headers["retry-after"] == "1"
        assert rejected[0].json()["error"]["code"] == "queue_full"
    finally:
        server.stop()


def test_large_images_are_tiled_and_match_the_untiled_result(live_server, tiny_models):
    from model.translate import Translator

    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)
    served = np.asarray(decoded(post(live_server, "photo", png_bytes(pixels)))).astype(int)
    untiled = Translator.load(tiny_models / "photo", tile_size=0).translate(Image.fromarray(pixels))
    difference = np.abs(served - np.asarray(untiled).astype(int))
    assert served.shape == (700, 900, 3)
    assert difference.mean() < 1.0 and difference.max() <= 8


def test_cors_origins_are_configurable(tiny_models):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    settings = Settings(models_dir=str(tiny_models), cors_origins=["https://example.org"])
    with TestClient(create_app(settings)) as client:
        allowed = client.options(
            "/v1/models/photo/translate",
            headers={"Origin": "https://example.org", "Access-Control-Request-Method": "POST"},
        )
        assert allowed.headers["access-control-allow-origin"] == "https://example.org"
        other = client.get("/v1/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_one_structured_log_line_per_request(tiny_models, caplog):
    import json
    import logging

    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    with TestClient(create_app(Settings(models_dir=str(tiny_models)))) as client:
        caplog.set_level(logging.INFO, logger="app.access")
        response = client.post(
            "/v1/models/photo/translate",
            files={"image": ("a.png", photo(30, 40), "image/png")},
            headers={"X-Request-ID": "abc123"},
        )
    assert response.headers["x-request-id"] == "abc123"
    records = [json.loads(r.message) for r in caplog.records if r.name == "app.access"]
    (record,) = [r for r in records if r["path"].endswith("/translate")]
    assert record["request_id"] == "abc123" and record["model"] == "photo"
    assert record["input_size"] == "40x30" and record["batch_size"] == 1
    assert record["status"] == 200 and record["latency_ms"] > 0
