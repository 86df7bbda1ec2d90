"""The service under faults and hostile requests: missing files, traversal, pickles, keys, SIGTERM.

Everything here is fast and part of ``make test``; the long runs are in ``test_fuzz.py``,
``test_training_faults.py`` (marked ``reliability``) and ``bench/load.py``.
"""

from __future__ import annotations

import io
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from model.checkpoint import load_generator
from model.errors import CheckpointError
from tests.conftest import LiveServer, tiny_config, write_label_dataset
from training.loop.trainer import Trainer


def png(height: int = 24, width: int = 24, seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def translate(url: str, model: str, data: bytes | None = None, **kwargs) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/{model}/translate",
        files={"image": ("a.png", data or png(), "image/png")},
        timeout=60,
        **kwargs,
    )


def raw_request(port: int, request: bytes, timeout: float = 10.0) -> tuple[int, bytes]:
    """Send bytes exactly as given (no client-side path normalization); status and body."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(request)
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


class Payload:
    """Unpickling this calls ``open(marker, "w")``: proof that pickled code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


# -- a missing or corrupt model file at start --------------------------------------------------


@pytest.fixture(scope="module")
def damaged_models(tiny_models, tmp_path_factory):
    """photo intact; labels without weights; gray without spec; pickled weights in 'evil'."""
    root = tmp_path_factory.mktemp("damaged")
    models = root / "models"
    shutil.copytree(tiny_models, models)
    (models / "labels" / "generator.safetensors").unlink()
    (models / "gray" / "spec.json").unlink()
    shutil.copytree(tiny_models / "photo", models / "evil")
    marker = root / "pickle-ran"
    torch.save({"weight": Payload(marker)}, models / "evil" / "generator.safetensors")
    # A real model beside (not inside) the models directory, for the traversal checks.
    shutil.copytree(tiny_models / "photo", root / "outside")
    server = LiveServer(models, log=root / "server.log")
    yield server, marker
    server.stop()


def test_missing_model_files_mark_only_those_models_unavailable(damaged_models):
    server, marker = damaged_models
    ready = httpx.get(f"{server.url}/readyz").json()
    assert ready["ready"] is True
    reasons = {name: model["error"] for name, model in ready["models"].items()}
    assert ready["models"]["photo"] == {"ready": True, "error": None}
    assert "generator.safetensors" in reasons["labels"]
    assert "spec.json" in reasons["gray"]
    assert "cannot read weights" in reasons["evil"]
    listed = {m["name"]: m for m in httpx.get(f"{server.url}/v1/models").json()["models"]}
    for name in ("labels", "gray", "evil"):
        assert listed[name]["status"] == "unavailable"
        assert listed[name]["error"] == reasons[name]
        response = translate(server.url, name)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "model_unavailable"
        assert reasons[name] in response.json()["error"]["message"]
    assert translate(server.url, "photo").status_code == 200
    assert not marker.exists()


# -- model names never reach outside the models directory --------------------------------------

TRAVERSALS = [
    "../outside",
    "..%2foutside",
    "..%2Foutside",
    "%2e%2e%2foutside",
    "%2e%2e/outside",
    "..%252foutside",
    "..%5coutside",
    "..\\outside",
    "%2e%2e%5coutside",
    "%c0%ae%c0%ae%c0%afoutside",
    "..",
    "%2e%2e",
    ".",
    "...",
    "photo%2f..%2f..%2foutside",
    "photo/../../outside",
    "%2fetc%2fpasswd",
    "/etc/passwd",
    "//etc/passwd",
    "%00",
    "photo%00",
    "photo%00..%2f",
    "photo%0a",
    ".photo",
    "-photo",
    "photo%20",
    "~",
    "%7e",
]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_model_names_never_reach_outside_the_models_directory(damaged_models, name):
    server, _ = damaged_models
    port = int(server.url.rsplit(":", 1)[1])
    body = (
        b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png() + b"\r\n--b--\r\n"
    )
    request = (
        f"POST /v1/models/{name}/translate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode("latin-1") + body
    status, answer = raw_request(port, request)
    assert status in (400, 404), (status, answer[:200])
    if status == 404:
        assert b'"error"' in answer


def test_the_registry_refuses_every_name_that_is_not_a_plain_folder_name(tiny_models, tmp_path):
    from app.registry import ModelRegistry
    from app.settings import Settings

    models = tmp_path / "models"
    shutil.copytree(tiny_models, models)
    shutil.copytree(tiny_models / "photo", tmp_path / "outside")
    (models / ".hidden").mkdir()
    registry = ModelRegistry(Settings(models_dir=str(models), device="cpu"))
    registry.load_all()
    assert sorted(registry.models) == ["gray", "labels", "photo"]
    decoded = [
        "../outside",
        "..",
        ".",
        "/etc/passwd",
        str(tmp_path / "outside"),
        "photo/../../outside",
        "..\\outside",
        "photo\x00",
        "photo\n",
        ".hidden",
        "",
    ]
    for name in decoded:
        assert registry.get(name) is None, name
    assert registry.get("photo") is not None


# -- weights never run pickled code ------------------------------------------------------------


def test_loading_a_pickled_generator_is_refused_without_running_it(tiny_models, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_models / "photo", folder)
    marker = tmp_path / "pickle-ran"
    torch.save({"weight": Payload(marker)}, folder / "generator.safetensors")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_generator(folder)
    assert not marker.exists()


def test_resuming_from_a_malicious_training_state_is_refused_without_running_it(tmp_path):
    data = write_label_dataset(tmp_path / "data")
    config = tiny_config(data, tmp_path, **{"data.input_kind": "label_map", "train.max_steps": "2"})
    Trainer(config, progress=False).train()
    checkpoint = config.run_dir / "checkpoints" / "step_00000002"
    state = torch.load(checkpoint / "training_state.pt", weights_only=True)
    marker = tmp_path / "pickle-ran"
    state["scaler"] = Payload(marker)
    torch.save(state, checkpoint / "training_state.pt")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        Trainer(config, resume=True, progress=False)
    assert not marker.exists()
    # The file does run code when unpickled the unsafe way: the refusal above is what saved us.
    torch.load(checkpoint / "training_state.pt", weights_only=False)
    assert marker.exists()


def test_resuming_from_a_corrupt_checkpoint_is_a_clear_error(tmp_path):
    data = write_label_dataset(tmp_path / "data")
    config = tiny_config(data, tmp_path, **{"data.input_kind": "label_map", "train.max_steps": "2"})
    Trainer(config, progress=False).train()
    checkpoint = config.run_dir / "checkpoints" / "step_00000002"
    (checkpoint / "discriminator.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")
    with pytest.raises(CheckpointError, match="discriminator|cannot read checkpoint"):
        Trainer(config, resume=True, progress=False)
    save_file({"x": torch.zeros(1)}, checkpoint / "discriminator.safetensors")
    (checkpoint / "training_state.pt").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        Trainer(config, resume=True, progress=False)


# -- the API key ---------------------------------------------------------------------------------

KEY = "s3cret-key"
MULTIPART = "multipart/form-data; boundary=x"


@pytest.fixture(scope="module")
def keyed(tiny_models):
    server = LiveServer(tiny_models, env={"PIX2PIX_API_KEY": KEY})
    yield server
    server.stop()


WITHOUT_THE_KEY = [
    {},
    {"X-API-Key": ""},
    {"X-API-Key": KEY[:-1]},
    {"X-API-Key": KEY + "x"},
    {"X-API-Key": KEY.upper()},
    {"X-API-Key": KEY.encode().hex()},
    {"X-API-Key": "s3cret-kez"},
    {"Authorization": KEY},
    {"Authorization": "Bearer"},
    {"Authorization": f"Basic {KEY}"},
    {"Authorization": f"Token {KEY}"},
    {"Authorization": f"Bearer {KEY}x"},
    {"X-Api-Key": "wrong", "Authorization": f"Bearer {KEY}"},
    {"X-API-Key": "wrong", "Authorization": f"Bearer {KEY}"},
]


def test_every_translate_request_without_the_key_gets_401(keyed):
    requests = []
    for headers in WITHOUT_THE_KEY:
        for model in ("photo", "labels", "gray", "missing-model"):
            requests.append((model, headers, {"files": {"image": ("a.png", png(), "image/png")}}))
    for extra in (
        {"content": b"not multipart", "headers": {"content-type": "text/plain"}},
        {"files": {"wrong-field": ("a.png", png(), "image/png")}},
        {"files": {"image": ("a.txt", b"not an image", "text/plain")}},
        {"content": b"--x\r\nbroken", "headers": {"content-type": MULTIPART}},
        {"content": b""},
    ):
        requests.append(("photo", {}, extra))
    with httpx.Client(base_url=keyed.url, timeout=60) as client:
        for model, headers, options in requests:
            options = dict(options)
            merged = {**headers, **options.pop("headers", {})}
            response = client.post(f"/v1/models/{model}/translate", headers=merged, **options)
            assert response.status_code == 401, (model, headers, options, response.text)
            assert response.json()["error"]["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
        ok = client.post(
            "/v1/models/photo/translate",
            headers={"X-API-Key": KEY},
            files={"image": ("a.png", png(), "image/png")},
        )
        assert ok.status_code == 200


def test_the_key_is_compared_in_constant_time(monkeypatch):
    import hmac

    import app.dependencies
    from app.errors import ApiError
    from app.settings import Settings

    calls = []
    real = hmac.compare_digest

    def spy(given, expected):
        calls.append((given, expected))
        return real(given, expected)

    monkeypatch.setattr(app.dependencies.hmac, "compare_digest", spy)

    class Headers(dict):
        def get(self, key, default=None):
            return super().get(key.lower(), default)

    class FakeRequest:
        def __init__(self, headers):
            self.headers = Headers(headers)

    settings = Settings(api_key=KEY)
    for headers in ({"x-api-key": "nope"}, {"authorization": "Bearer nope-nope"}):
        with pytest.raises(ApiError):
            app.dependencies.require_api_key(FakeRequest(headers), settings)
    app.dependencies.require_api_key(FakeRequest({"x-api-key": KEY}), settings)
    assert [expected for _, expected in calls] == [KEY.encode()] * 3
    assert [given for given, _ in calls] == [b"nope", b"nope-nope", KEY.encode()]


# -- SIGTERM drains what is in flight ----------------------------------------------------------


def queue_depth(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("pix2pix_queue_depth{")
    )


# Small tiles, one at a time: a 640 px image is ~150 batches, long enough to be in flight.
SLOW_TILES = {"PIX2PIX_TILE_SIZE": "64", "PIX2PIX_TILE_OVERLAP": "8", "PIX2PIX_MAX_BATCH": "1"}


def test_sigterm_lets_requests_in_flight_finish_before_exit(tiny_models, tmp_path):
    server = LiveServer(
        tiny_models,
        # A deadline far beyond what the three requests need.
        env={**SLOW_TILES, "PIX2PIX_DRAIN_TIMEOUT_S": "300"},
        log=tmp_path / "server.log",
    )
    big = png(640, 640, seed=3)
    results: dict[int, httpx.Response | Exception] = {}

    def send(index: int) -> None:
        try:
            results[index] = translate(server.url, "photo", big)
        except Exception as error:  # recorded and asserted on below
            results[index] = error

    threads = [threading.Thread(target=send, args=(i,)) for i in range(3)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while queue_depth(server.url) == 0:
            assert time.monotonic() < deadline, "the requests never reached the queue"
            time.sleep(0.02)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        # While draining, new connections are refused.
        time.sleep(0.3)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{server.url}/healthz", timeout=2)
        for thread in threads:
            thread.join(timeout=120)
        # uvicorn re-raises SIGTERM once it has shut down cleanly, so -SIGTERM is a clean exit.
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if server.process.poll() is None:
            server.process.kill()
        server.stop()
    for index in range(3):
        response = results[index]
        assert isinstance(response, httpx.Response), response
        assert response.status_code == 200, response.text[:200]
        assert Image.open(io.BytesIO(response.content)).size == (640, 640)
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log
    assert log.count('"status": 200') == 3 and "Finished server process" in log
    assert log.index("Shutting down") < log.rindex('"status": 200')
    assert time.monotonic() - signalled > 0.3  # it did wait for them


def send_all(url: str, bodies: list[bytes]) -> tuple[list[threading.Thread], dict]:
    """Each body as its own translate request on its own thread; the answers by index."""
    results: dict[int, httpx.Response | Exception] = {}

    def send(index: int) -> None:
        try:
            results[index] = translate(url, "photo", bodies[index])
        except Exception as error:  # recorded and asserted on below
            results[index] = error

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    return threads, results


@pytest.mark.parametrize(
    "deadline",
    [
        pytest.param({"PIX2PIX_DRAIN_TIMEOUT_S": "1"}, id="the drain's deadline"),
        pytest.param(
            {"PIX2PIX_DRAIN_TIMEOUT_S": "300", "UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN": "1"},
            id="uvicorn's shorter timeout",
        ),
    ],
)
def test_a_drain_answers_what_cannot_finish_in_time_with_503_never_500(
    tiny_models, tmp_path, deadline
):
    log = tmp_path / "server.log"
    server = LiveServer(tiny_models, env={**SLOW_TILES, **deadline}, log=log)
    # Eight large requests at once, about 3,000 batches of small tiles, keep the service busy
    # for far longer than a second.
    threads, results = send_all(server.url, [png(1024, 1024, seed=i) for i in range(8)])
    try:
        deadline_at = time.monotonic() + 60
        while queue_depth(server.url) == 0:
            assert time.monotonic() < deadline_at, "the requests never reached the queue"
            time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        for thread in threads:
            thread.join(timeout=120)
        assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if server.process.poll() is None:
            server.process.kill()
        server.stop()
    answers = [results[index] for index in range(8)]
    assert all(isinstance(answer, httpx.Response) for answer in answers), answers
    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) <= {200, 503}, statuses
    refused = [answer for answer in answers if answer.status_code == 503]
    assert refused, f"every request finished within the deadline: {statuses}"
    for answer in refused:
        assert answer.headers["retry-after"] == "1"
        assert answer.json()["error"]["code"] == "shutting_down"
    for answer in answers:
        if answer.status_code == 200:
            assert Image.open(io.BytesIO(answer.content)).size == (1024, 1024)
    text = log.read_text()
    assert "Traceback" not in text and "Exception in ASGI application" not in text
    # One line for each refused request, and the server finished its shutdown.
    assert text.count("answered 503 (request") == len(refused)
    assert "Finished server process" in text


def test_a_second_uvicorn_worker_is_refused_with_a_clear_message(tiny_models, tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import free_port

    log = tmp_path / "server.log"
    with open(log, "w") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:create_app",
                "--factory",
                "--workers",
                "2",
                "--host",
                "127.0.0.1",
                "--port",
                str(free_port()),
            ],
            env={**os.environ, "PIX2PIX_MODELS_DIR": str(tiny_models)},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        try:
            # uvicorn stops every worker once one fails to start.
            process.wait(timeout=180)
        finally:
            if process.poll() is None:
                process.kill()
    text = log.read_text()
    assert "runs one worker per process" in text, text[-2000:]
    assert "one container per worker" in text
    assert "failed to start, stopping the parent process" in text
