"""Checks a running pix2pix service from outside, as `make docker-test` does for the image.

Waits for /readyz, translates one image with each ready model and checks that the answer is a
PNG of the input's size, then stops the server with SIGTERM while a large request is being
served and checks that the request still gets an answer (its image, or 503 with Retry-After
when the drain's deadline comes first) and the process exits. Talks to the URL
given (127.0.0.1 in docker-test) and signals only the process id given.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import numpy as np
from PIL import Image


def request(url: str, data: bytes | None = None, headers: dict | None = None, timeout=60):
    """(status, headers, body) for a GET, or a POST when data is given."""
    call = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(call, timeout=timeout) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def wait_ready(base: str, deadline_s: float) -> dict:
    deadline = time.monotonic() + deadline_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            status, _, body = request(f"{base}/readyz", timeout=5)
            if status == 200:
                return json.loads(body)
            last = f"{status} {body[:200]!r}"
        except OSError as error:
            last = str(error)
        time.sleep(0.5)
    raise SystemExit(f"FAIL: /readyz not ready after {deadline_s:.0f} s (last: {last})")


def sample_input(model: dict, width: int, height: int) -> Image.Image:
    """An input the model accepts: palette colors for label maps, else smooth gradients."""
    rng = np.random.default_rng(0)
    if model["input_kind"] == "label_map":
        colors = np.array([entry["color"] for entry in model["palette"]], np.uint8)
        blocks = rng.integers(0, len(colors), (height // 16 + 1, width // 16 + 1))
        ids = np.kron(blocks, np.ones((16, 16), np.int64))[:height, :width]
        return Image.fromarray(colors[ids])
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :] * np.ones((height, 1))
    gray = ramp.astype(np.uint8)
    if model["input_kind"] == "grayscale":
        return Image.fromarray(gray, "L")
    return Image.fromarray(np.stack([gray, gray[::-1], 255 - gray], -1))


def multipart(image: Image.Image) -> tuple[bytes, dict]:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="in.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + buffer.getvalue()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def translate(base: str, model: dict, image: Image.Image, headers: dict, timeout=120):
    body, form = multipart(image)
    return request(
        f"{base}/v1/models/{model['name']}/translate", body, headers | form, timeout=timeout
    )


def check_translation(base: str, model: dict, headers: dict) -> None:
    width, height = 203, 117  # not multiples of anything the network pads to
    image = sample_input(model, width, height)
    start = time.perf_counter()
    status, response_headers, body = translate(base, model, image, headers)
    elapsed_ms = (time.perf_counter() - start) * 1000
    if status != 200:
        raise SystemExit(f"FAIL: {model['name']}: HTTP {status}: {body[:300]!r}")
    if response_headers.get("content-type") != "image/png":
        raise SystemExit(f"FAIL: {model['name']}: content-type {response_headers}")
    output = Image.open(io.BytesIO(body))
    output.load()
    if output.size != (width, height) or output.mode != "RGB":
        raise SystemExit(f"FAIL: {model['name']}: got {output.mode} {output.size}")
    print(
        f"ok   {model['name']}: {width}x{height} {model['input_kind']} -> "
        f"{output.width}x{output.height} RGB PNG, {elapsed_ms:.0f} ms (runtime {model['runtime']})"
    )


def check_graceful_stop(base: str, model: dict, headers: dict, pid: int) -> None:
    """SIGTERM while a large (tiled) request is being served: it must still get its image, or
    on a machine too busy to finish it within the drain's deadline a 503 with Retry-After;
    never a 500 or a dropped connection."""
    width, height = 1600, 1200
    body, form = multipart(sample_input(model, width, height))
    host, port = urllib.parse.urlsplit(base).netloc.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=300)
    # The whole request is on the wire before the signal; the pause lets the server read it.
    connection.request("POST", f"/v1/models/{model['name']}/translate", body, headers | form)
    time.sleep(0.3)
    signalled = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    try:
        response = connection.getresponse()
        status, answer = response.status, response.read()
    except OSError as error:
        raise SystemExit(f"FAIL: the request in flight at SIGTERM got no answer: {error}") from None
    finished = time.monotonic()
    if status == 503 and response.getheader("Retry-After"):
        outcome = "503 with Retry-After: the drain's deadline came first"
    elif status == 200:
        size = Image.open(io.BytesIO(answer)).size
        if size != (width, height):
            raise SystemExit(f"FAIL: the request in flight at SIGTERM got a {size} image")
        outcome = "200, full-size image"
    else:
        raise SystemExit(f"FAIL: the request in flight at SIGTERM got {status}: {answer[:300]!r}")
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        time.sleep(0.2)
    if os.path.exists(f"/proc/{pid}"):
        raise SystemExit("FAIL: the server did not exit within 30 s of SIGTERM")
    try:
        request(f"{base}/healthz", timeout=5)
        raise SystemExit("FAIL: the server still answers after SIGTERM")
    except OSError:
        pass
    print(
        f"ok   SIGTERM during a {width}x{height} request: answered "
        f"{finished - signalled:.1f} s later ({outcome}), then the server exited "
        "and refuses connections"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="e.g. http://127.0.0.1:8000")
    parser.add_argument("--pid", type=int, required=True, help="server process to SIGTERM")
    parser.add_argument("--ready-timeout", type=float, default=180)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    headers = {"X-API-Key": args.api_key} if args.api_key else {}

    start = time.monotonic()
    readiness = wait_ready(args.url, args.ready_timeout)
    ready = [name for name, state in readiness["models"].items() if state["ready"]]
    print(f"ok   /readyz after {time.monotonic() - start:.1f} s: ready {', '.join(ready)}")
    status, _, body = request(f"{args.url}/healthz")
    if status != 200:
        raise SystemExit(f"FAIL: /healthz answered {status}: {body[:200]!r}")
    models = [
        m
        for m in json.loads(request(f"{args.url}/v1/models")[2])["models"]
        if m["status"] == "ready"
    ]
    for model in models:
        check_translation(args.url, model, headers)
    check_graceful_stop(args.url, models[0], headers, args.pid)


if __name__ == "__main__":
    main()
