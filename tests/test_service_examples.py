"""A model's scenes and examples over HTTP, against a real uvicorn on 127.0.0.1: listed with
their URLs, served by name, and nothing else served (unknown names, other files, traversal)."""

from __future__ import annotations

import io
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image

from model.spec import GeneratorSpec
from tests.conftest import LiveServer, palette_image, write_tiny_models


def list_examples(folder, **listing) -> None:
    spec = GeneratorSpec.load(folder)
    extra = spec.extra | listing
    GeneratorSpec.from_dict(spec.to_dict() | {"extra": extra}).save(folder)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A server whose label-map model lists a scene and an example, whose colorizer lists a
    photo, and whose "broken" model lists a file it lacks."""
    root = write_tiny_models(tmp_path_factory.mktemp("models"))
    labels, gray = root / "labels", root / "gray"
    (labels / "examples").mkdir()
    ids = np.zeros((32, 48), np.uint8)
    ids[16:], ids[4:12, 4:12] = 1, 2
    palette_image(ids).save(labels / "examples" / "hills.png")
    palette_image(1 - np.minimum(ids, 1)).save(labels / "examples" / "meadow.png")
    (labels / "examples" / "SOURCES.md").write_text("painted for the tests\n")
    list_examples(
        labels,
        scenes=[{"name": "Hills", "file": "examples/hills.png"}],
        examples=[{"name": "Meadow", "file": "examples/meadow.png"}],
    )
    (gray / "examples").mkdir()
    ramp = np.tile(np.linspace(0, 255, 40, dtype=np.uint8), (24, 1))
    Image.fromarray(ramp, "L").save(gray / "examples" / "ramp.jpg", quality=90)
    list_examples(gray, examples=[{"name": "Ramp", "file": "examples/ramp.jpg"}])
    shutil.copytree(labels, root / "broken")
    (root / "broken" / "examples" / "meadow.png").unlink()
    server = LiveServer(root, env={"PIX2PIX_WATCH_MODELS": "false"})
    yield server.url, root
    server.stop()


def models(url: str) -> dict[str, dict]:
    return {m["name"]: m for m in httpx.get(f"{url}/v1/models").json()["models"]}


def test_scenes_and_examples_are_listed_with_urls_that_serve_their_files(served):
    url, root = served
    listed = models(url)
    labels, gray = listed["labels"], listed["gray"]
    assert labels["scenes"] == [{"name": "Hills", "url": "/v1/models/labels/examples/hills.png"}]
    assert labels["examples"] == [
        {"name": "Meadow", "url": "/v1/models/labels/examples/meadow.png"}
    ]
    assert gray["scenes"] == [] and [e["name"] for e in gray["examples"]] == ["Ramp"]
    assert listed["photo"]["scenes"] == listed["photo"]["examples"] == []

    for entry, folder in ((labels["scenes"][0], "labels"), (gray["examples"][0], "gray")):
        response = httpx.get(url + entry["url"])
        assert response.status_code == 200
        file_name = entry["url"].rsplit("/", 1)[1]
        assert response.content == (root / folder / "examples" / file_name).read_bytes()
    assert httpx.get(url + labels["scenes"][0]["url"]).headers["content-type"] == "image/png"
    assert httpx.get(url + gray["examples"][0]["url"]).headers["content-type"] == "image/jpeg"


def test_a_served_scene_translates(served):
    url, _ = served
    scene = httpx.get(f"{url}/v1/models/labels/examples/hills.png").content
    response = httpx.post(
        f"{url}/v1/models/labels/translate", files={"image": ("hills.png", scene, "image/png")}
    )
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (48, 32)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/models/labels/examples/nothing.png",  # not listed
        "/v1/models/labels/examples/SOURCES.md",  # in examples/, not listed
        "/v1/models/labels/examples/spec.json",  # in the model folder, not listed
        "/v1/models/labels/examples/../spec.json",
        "/v1/models/labels/examples/..%2Fspec.json",
        "/v1/models/labels/examples/%2E%2E%2F%2E%2E%2Fgray%2Fspec.json",
        "/v1/models/labels/examples/..%5Cspec.json",
        "/v1/models/labels/examples/%2Fetc%2Fpasswd",
        "/v1/models/labels/examples/hills.png%00.png",
        "/v1/models/photo/examples/hills.png",  # another model's file
    ],
)
def test_only_listed_files_are_served(served, path):
    url, _ = served
    # Sent as written: httpx would otherwise fold "../" and percent-escapes before sending.
    with httpx.Client() as client:
        request = client.build_request("GET", url)
        request.url = request.url.copy_with(raw_path=path.encode())
        response = client.send(request)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] in {"example_not_found", "not_found"}
    assert "architecture" not in response.text  # no spec, nor any other file, leaked


def test_unknown_model_and_unlisted_file_name_what_is_missing(served):
    url, _ = served
    response = httpx.get(f"{url}/v1/models/nobody/examples/hills.png")
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    error = httpx.get(f"{url}/v1/models/labels/examples/nothing.png").json()["error"]
    assert error["code"] == "example_not_found"
    assert "'nothing.png'" in error["message"] and "hills.png, meadow.png" in error["message"]


def test_a_listed_file_that_is_missing_makes_the_model_unavailable(served):
    url, _ = served
    broken = models(url)["broken"]
    assert broken["status"] == "unavailable"
    assert "extra.examples[0] ('Meadow')" in broken["error"]
    assert "examples/meadow.png is missing" in broken["error"]
    assert broken["scenes"] == [] and broken["examples"] == []
