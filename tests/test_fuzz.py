"""Hostile uploads: random and mutated image bytes, wrong content types, huge declared sizes and
multipart edge cases get a 2xx or a typed 4xx, never a 5xx, a hang or a crash.

``make test`` runs a few hundred derandomized cases against the app in process (a server
exception fails the test with its traceback) and replays ``tests/fuzz_corpus``, the nastiest
cases found so far. ``make reliability`` runs 10,000 cases against a real uvicorn.
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
import zlib
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import PALETTE, LiveServer

CORPUS = Path(__file__).parent / "fuzz_corpus"
MODELS = ("photo", "labels", "gray")
# Small limits keep each case cheap; the checks are the same at any size.
LIMITS = {
    "PIX2PIX_MAX_UPLOAD_BYTES": str(512 * 1024),
    "PIX2PIX_MAX_SIDE": "1024",
    "PIX2PIX_MAX_PIXELS": str(512 * 512),
    "PIX2PIX_TILE_SIZE": "128",
    "PIX2PIX_TILE_OVERLAP": "16",
    "PIX2PIX_MAX_WAIT_MS": "0",
}

# -- building blocks -------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A PNG header that declares ``width`` x ``height`` with only a token of pixel data."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + png_chunk(b"IEND", b"")
    )


def gif_declaring(width: int, height: int) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00;"
    return b"GIF89a" + screen + image


def bmp_declaring(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    pixels = b"\0" * 48
    header = struct.pack("<2sIHHI", b"BM", 14 + len(info) + len(pixels), 0, 0, 14 + len(info))
    return header + info + pixels


def jpeg_declaring(width: int, height: int) -> bytes:
    data = bytearray(encode(np.zeros((8, 8, 3), np.uint8), "JPEG"))
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


DECLARING = {"png": png_declaring, "gif": gif_declaring, "bmp": bmp_declaring}


def encode(array: np.ndarray, pil_format: str, mode: str | None = None) -> bytes:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    if mode == "P" or pil_format == "GIF":
        image = image.convert("P")
    buffer = io.BytesIO()
    image.save(buffer, format=pil_format)
    return buffer.getvalue()


def palette_bytes(height: int, width: int, seed: int) -> bytes:
    ids = np.random.default_rng(seed).integers(0, len(PALETTE), (height, width)).astype(np.uint8)
    image = Image.fromarray(ids, "P")
    colors = [c for entry in PALETTE for c in entry["color"]]
    image.putpalette(colors + [0] * (768 - len(colors)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# -- strategies ------------------------------------------------------------------------------

FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "ICO", "TGA")
MODES = (None, "L", "LA", "RGBA", "CMYK", "I", "I;16", "F", "1", "P", "YCbCr", "LAB", "HSV")


@st.composite
def valid_images(draw) -> bytes:
    width, height = draw(st.integers(1, 96)), draw(st.integers(1, 96))
    if draw(st.integers(0, 7)) == 0:  # long and thin: several tiles, odd remainders
        width, height = draw(st.integers(97, 700)), draw(st.integers(1, 8))
        if draw(st.booleans()):
            width, height = height, width
    if draw(st.booleans()) and draw(st.booleans()):
        return palette_bytes(height, width, draw(st.integers(0, 2**16)))
    seed = draw(st.integers(0, 2**16))
    array = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    pil_format = draw(st.sampled_from(FORMATS))
    mode = draw(st.sampled_from(MODES))
    for attempt in ((pil_format, mode), (pil_format, None), ("PNG", None)):
        try:
            return encode(array, *attempt)
        except (OSError, ValueError, KeyError):  # a mode or size the format cannot hold
            continue
    raise AssertionError("unreachable: PNG holds any RGB array")


@st.composite
def mutated_images(draw) -> bytes:
    data = bytearray(draw(valid_images()))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(("flip", "truncate", "insert", "delete", "duplicate")))
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            data[at:at] = data[at : at + draw(st.integers(1, 256))]
    return bytes(data)


@st.composite
def huge_declared(draw) -> bytes:
    side = st.sampled_from((0, 1, 1025, 4096, 65535, 2**31 - 1, 2**32 - 1))
    width, height = draw(side), draw(side)
    kind = draw(st.sampled_from(("png", "gif", "bmp", "jpeg", "png16", "bmp-neg")))
    if kind == "jpeg":
        return jpeg_declaring(min(width, 65535), min(height, 65535))
    if kind == "png16":
        return png_declaring(width, height, bit_depth=16, color_type=6)
    if kind == "bmp-neg":
        return bmp_declaring(min(width, 2**31 - 1), -min(height, 2**31 - 1))
    if kind in ("gif",):
        return gif_declaring(min(width, 65535), min(height, 65535))
    if kind == "bmp":
        return bmp_declaring(min(width, 2**31 - 1), min(height, 2**31 - 1))
    return png_declaring(width, height)


payloads = st.one_of(
    st.binary(max_size=2048),
    valid_images(),
    mutated_images(),
    huge_declared(),
    st.sampled_from((b"", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"\x89PNG\r\n\x1a\n")),
)
part_types = st.one_of(
    st.sampled_from(
        (
            "image/png",
            "image/jpeg",
            "application/octet-stream",
            "text/plain",
            "",
            "image/svg+xml",
            "multipart/mixed; boundary=zz",
            "image/png; charset=utf-8",
        )
    ),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)
filenames = st.one_of(
    st.sampled_from(("a.png", "../../etc/passwd", "/etc/shadow", "..%2f..%2fx", "", "a\\b.png")),
    st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40),
)
boundaries = st.one_of(
    st.sampled_from(("x", "a" * 70, "a" * 200, "----WebKitFormBoundary7MA4YWxkTrZu0gW", "q u")),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789'()+_,-./:=?", min_size=1, max_size=72),
)


@st.composite
def raw_multipart(draw) -> tuple[bytes, str]:
    """A hand-built multipart body with the edge cases browsers never send."""
    boundary = draw(boundaries)
    newline = draw(st.sampled_from((b"\r\n", b"\n")))
    b = boundary.encode("latin-1")
    parts = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(("image", "image", "file", "", 'image"; x="', "IMAGE")))
        headers = []
        disposition = draw(st.sampled_from(("form-data", "attachment", "inline", "")))
        filename = draw(st.one_of(st.none(), filenames))
        line = f'Content-Disposition: {disposition}; name="{name}"'
        if filename is not None:
            line += f'; filename="{filename}"'
        if draw(st.booleans()) or draw(st.booleans()):
            headers.append(line.encode("utf-8", "surrogatepass"))
        if draw(st.booleans()):
            headers.append(b"Content-Type: " + draw(part_types).encode("latin-1", "replace"))
        if draw(st.booleans()) and draw(st.booleans()):
            headers.append(b"Content-Transfer-Encoding: base64")
        if draw(st.booleans()) and draw(st.booleans()):
            headers.append(b"X-Long: " + b"h" * draw(st.integers(0, 20000)))
        parts.append(newline.join(headers) + newline + newline + draw(payloads))
    body = draw(st.sampled_from((b"", b"preamble" + newline)))
    for part in parts:
        body += b"--" + b + newline + part + newline
    ending = draw(st.sampled_from(("close", "close", "none", "garbage", "no-newline")))
    if ending == "close":
        body += b"--" + b + b"--" + newline
    elif ending == "garbage":
        body += b"--" + b + b"--" + newline + b"epilogue" * 10
    elif ending == "no-newline":
        body += b"--" + b + b"--"
    quoted = draw(st.booleans())
    parameter = f'boundary="{boundary}"' if quoted else f"boundary={boundary}"
    content_type = draw(
        st.sampled_from(
            (
                f"multipart/form-data; {parameter}",
                f"multipart/form-data; {parameter}",
                "multipart/form-data",
                f"multipart/form-data; charset=utf-8; {parameter}",
                f"multipart/mixed; {parameter}",
                "application/x-www-form-urlencoded",
                "application/json",
                "text/plain",
                "",
            )
        )
    )
    return body, content_type


@st.composite
def requests(draw) -> dict:
    """One translate request: a model path, query, and a body (normal or hand-built)."""
    model = draw(st.sampled_from(MODELS))
    if draw(st.integers(0, 9)) == 0:
        model = draw(st.sampled_from(("..", "%2e%2e", "..%2fphoto", "photo%00", "nope", "ph%6fto")))
    params = {}
    if draw(st.booleans()):
        params["format"] = draw(st.sampled_from(("png", "jpeg", "webp", "gif", "", "PNG", "x")))
    if draw(st.booleans()):
        params["resize"] = draw(st.sampled_from(("pad", "fit", "crop", "")))
    if draw(st.booleans()):
        body, content_type = draw(raw_multipart())
        return {"model": model, "params": params, "content": body, "content_type": content_type}
    return {
        "model": model,
        "params": params,
        "file": (draw(filenames), draw(payloads), draw(part_types)),
        "field": draw(st.sampled_from(("image",) * 6 + ("file", "img"))),
    }


def send(client: httpx.Client, request: dict) -> httpx.Response:
    url = f"/v1/models/{request['model']}/translate"
    if "content" in request:
        headers = {"content-type": request["content_type"]} if request["content_type"] else {}
        content = request["content"]
        return client.post(url, params=request["params"], content=content, headers=headers)
    name, data, content_type = request["file"]
    return client.post(
        url, params=request["params"], files={request["field"]: (name, data, content_type)}
    )


def check(response: httpx.Response) -> None:
    """2xx with an image, or 4xx with a typed JSON error; nothing else."""
    status = response.status_code
    assert status < 500, (status, response.text[:500])
    if status == 200:
        assert response.headers["content-type"].startswith("image/")
        Image.open(io.BytesIO(response.content)).load()
    else:
        assert 400 <= status < 500, status
        error = response.json()["error"]
        assert error["code"] and error["message"]


# -- in process: the fast part ---------------------------------------------------------------


@pytest.fixture(scope="module")
def app_client(tiny_models):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    environment = {key.removeprefix("PIX2PIX_").lower(): value for key, value in LIMITS.items()}
    app = create_app(Settings(models_dir=str(tiny_models), **environment))
    # raise_server_exceptions: an unhandled exception fails the test with its traceback.
    with TestClient(app, raise_server_exceptions=True) as client:
        yield client


FAST_CASES = int(os.environ.get("PIX2PIX_FUZZ_FAST_CASES", "400"))


@settings(
    max_examples=FAST_CASES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@given(request=requests())
def test_fuzzed_uploads_get_2xx_or_typed_4xx(app_client, request):
    check(send(app_client, request))


def corpus_cases() -> list[dict]:
    cases = json.loads((CORPUS / "cases.json").read_text())
    return [{"name": name, **case} for name, case in sorted(cases.items())]


@pytest.mark.parametrize("case", corpus_cases(), ids=lambda case: case["name"])
def test_corpus_case_gets_its_expected_answer(app_client, case):
    body = (CORPUS / case["body"]).read_bytes()
    if "content_type" in case:
        request = {
            "model": case.get("model", "photo"),
            "params": case.get("params", {}),
            "content": body,
            "content_type": case["content_type"],
        }
    else:
        request = {
            "model": case.get("model", "photo"),
            "params": case.get("params", {}),
            "file": (case.get("filename", "a.png"), body, case.get("part_type", "image/png")),
            "field": "image",
        }
    response = send(app_client, request)
    check(response)
    assert response.status_code == case["status"], response.text[:300]
    if "code" in case:
        assert response.json()["error"]["code"] == case["code"]


# -- against a real uvicorn: the full run ----------------------------------------------------

FULL_CASES = int(os.environ.get("PIX2PIX_FUZZ_CASES", "10000"))


@pytest.mark.reliability
def test_ten_thousand_fuzzed_uploads_against_uvicorn(tiny_models, tmp_path):
    server = LiveServer(tiny_models, env=LIMITS, log=tmp_path / "server.log")
    statuses: Counter = Counter()
    slowest = [0.0]
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:

            @settings(
                max_examples=FULL_CASES,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(request=requests())
            def run(request):
                start = time.perf_counter()
                response = send(client, request)
                slowest[0] = max(slowest[0], time.perf_counter() - start)
                statuses[response.status_code] += 1
                check(response)

            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
        assert server.process.poll() is None, "the server died"
        assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    print(
        f"\nfuzz: {sum(statuses.values())} cases in {seconds:.0f} s, statuses "
        f"{dict(sorted(statuses.items()))}, slowest {slowest[0] * 1000:.0f} ms"
    )
    assert sum(statuses.values()) >= FULL_CASES
    assert "Traceback" not in log and "unhandled error" not in log
