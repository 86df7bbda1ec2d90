"""JPEG-ed label maps, as people have them: read within the tolerance the model was trained with.

A blocky palette image saved as JPEG (quality 75) drifts off the palette; a model whose spec
records a palette tolerance takes it as it is through the model-side decode, ``pix2pix
translate``, the service and the Python API, and one trained without a tolerance refuses it
by naming the colors and how many pixels hold them.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

import pix2pix
from model.errors import InputError, SpecError
from model.processing import prepare_input
from model.spec import GeneratorArchitecture, GeneratorSpec, LabelClass
from tests.conftest import PALETTE, LiveServer, tiny_config, write_label_dataset
from training.data.datasets import data_config_for, make_spec

COLORS = np.array([entry["color"] for entry in PALETTE], dtype=np.uint8)


def blocky_label_ids() -> np.ndarray:
    """A 48x64 map of sky over grass with two rocks, in 16-pixel blocks."""
    ids = np.zeros((48, 64), dtype=np.uint8)
    ids[16:] = 1
    ids[16:32, 16:48] = 2
    ids[32:, 48:] = 2
    return ids


@pytest.fixture(scope="module")
def jpeg_label_map(tmp_path_factory) -> Path:
    """The blocky map painted in palette colors and saved as a JPEG at quality 75."""
    path = tmp_path_factory.mktemp("jpeg") / "labels.jpg"
    Image.fromarray(COLORS[blocky_label_ids()]).save(path, quality=75)
    return path


def off_palette_pixels(path: Path) -> tuple[int, int]:
    """How many distinct colors of the image are no palette color, and how many pixels."""
    rgb = np.asarray(Image.open(path).convert("RGB"))
    known = (rgb[:, :, None, :] == COLORS[None, None]).all(axis=3).any(axis=2)
    return len(np.unique(rgb[~known], axis=0)), int((~known).sum())


def label_spec(palette_tolerance: int) -> GeneratorSpec:
    palette = tuple(LabelClass(e["id"], e["name"], tuple(e["color"])) for e in PALETTE)
    return GeneratorSpec(
        GeneratorArchitecture(num_downs=3, base_width=4),
        in_channels=len(palette),
        out_channels=3,
        input_kind="label_map",
        palette=palette,
        one_hot=True,
        palette_tolerance=palette_tolerance,
        train_size=32,
        pad_multiple=8,
    )


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> Path:
    """Two untrained tiny label-map models with the same weights: ``tolerant`` was trained
    with palette_tolerance 255 (as the facades presets), ``strict`` with 0."""
    from model.checkpoint import save_model_folder
    from model.networks import build_generator, init_weights

    root = tmp_path_factory.mktemp("tolerance-models")
    torch.manual_seed(0)
    generator = None
    for name, tolerance in (("tolerant", 255), ("strict", 0)):
        spec = label_spec(tolerance)
        if generator is None:
            generator = build_generator(spec.architecture, spec.in_channels, spec.out_channels)
            init_weights(generator)
        save_model_folder(root / name, generator.eval(), spec)
    return root


@pytest.fixture(scope="module")
def expected_photo(models, jpeg_label_map) -> np.ndarray:
    """The tolerant model's translation of the JPEG's snapped class ids."""
    translator = pix2pix.load(models / "tolerant", runtime="torch", device="cpu")
    ids = prepare_input(Image.open(jpeg_label_map), translator.spec)
    return np.asarray(translator(ids), dtype=np.int16)


def assert_refusal_names_colors_and_pixels(message: str, path: Path) -> None:
    colors, pixels = off_palette_pixels(path)
    assert f"{colors} color(s) not in the palette in {pixels} pixel(s)" in message, message
    assert "more than 0 (the palette tolerance, per channel)" in message
    assert "and " + str(colors - 5) + " more" in message  # five named, the rest counted
    first = message.split("palette color: ")[1].split(" in ")[0]
    named = tuple(int(value) for value in first.strip("()").split(", "))
    assert named not in {tuple(color) for color in COLORS.tolist()}, f"{first} is in the palette"


# -- the spec ----------------------------------------------------------------------------------


def test_the_fixture_drifts_off_the_palette(jpeg_label_map):
    colors, pixels = off_palette_pixels(jpeg_label_map)
    assert colors > 5 and pixels > 1000  # far more than a few stray pixels


def test_a_spec_without_the_tolerance_reads_as_zero_and_writes_back_unchanged():
    written = label_spec(0).to_dict()
    assert "palette_tolerance" not in written  # as specs were written before the field
    loaded = GeneratorSpec.from_dict(written)
    assert loaded.palette_tolerance == 0
    # What resuming compares: an old checkpoint's spec against a config's at the default.
    assert loaded.to_dict() == label_spec(0).to_dict()
    recorded = GeneratorSpec.from_json(label_spec(255).to_json())
    assert recorded.palette_tolerance == 255 and recorded == label_spec(255)


@pytest.mark.parametrize(
    "value,problem",
    [(-1, "0..255"), (256, "0..255"), (True, "whole number"), (2.5, "whole number")],
)
def test_an_unusable_spec_tolerance_is_refused(value, problem):
    with pytest.raises(SpecError, match=problem):
        GeneratorSpec.from_dict(label_spec(0).to_dict() | {"palette_tolerance": value})


def test_a_tolerance_on_a_photo_model_is_refused():
    with pytest.raises(SpecError, match="applies to label maps only, not to photo inputs"):
        GeneratorSpec(GeneratorArchitecture(num_downs=3), 3, 3, palette_tolerance=8)


def test_training_records_the_configs_tolerance_for_label_maps_only(tmp_path):
    root = write_label_dataset(tmp_path / "labels")
    labels = tiny_config(
        root, tmp_path, **{"data.input_kind": "label_map", "data.palette_tolerance": "40"}
    )
    assert make_spec(labels).palette_tolerance == 40
    photos = tiny_config(root, tmp_path, **{"data.palette_tolerance": "40"})
    assert make_spec(photos).input_kind == "photo" and make_spec(photos).palette_tolerance == 0


def test_evaluation_reads_label_colors_as_the_spec_says_unless_told(tmp_path):
    root = write_label_dataset(tmp_path / "labels")
    assert data_config_for(label_spec(255), root, "test").palette_tolerance == 255
    assert data_config_for(label_spec(255), root, "test", 0).palette_tolerance == 0


# -- (a) the model-side decode -------------------------------------------------------------------


def test_the_decode_snaps_jpeg_colors_within_the_spec_tolerance(jpeg_label_map):
    ids = prepare_input(Image.open(jpeg_label_map), label_spec(255))
    # Nearest colors: right nearly everywhere, a JPEG-blurred edge pixel may go either way.
    assert (ids == blocky_label_ids()).mean() > 0.99


def test_the_decode_refuses_colors_beyond_a_zero_tolerance(jpeg_label_map):
    with pytest.raises(InputError) as refused:
        prepare_input(Image.open(jpeg_label_map), label_spec(0))
    assert_refusal_names_colors_and_pixels(str(refused.value), jpeg_label_map)


def test_an_explicit_tolerance_overrides_the_specs(jpeg_label_map):
    image = Image.open(jpeg_label_map)
    with pytest.raises(InputError, match="not in the palette"):
        prepare_input(image, label_spec(255), palette_tolerance=0)
    widened = prepare_input(image, label_spec(0), palette_tolerance=255)
    assert np.array_equal(widened, prepare_input(image, label_spec(255)))
    with pytest.raises(InputError, match="palette_tolerance must be in 0..255, got 300"):
        prepare_input(image, label_spec(0), palette_tolerance=300)


# -- (b) pix2pix translate -----------------------------------------------------------------------


def translate_command(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pix2pix", "translate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_translate_takes_the_jpeg_with_no_flag(models, jpeg_label_map, expected_photo, tmp_path):
    result = translate_command(models / "tolerant", jpeg_label_map, "--out", tmp_path, "--quiet")
    assert result.returncode == 0, result.stderr
    photo = np.asarray(Image.open(tmp_path / "labels.png"), dtype=np.int16)
    assert np.abs(photo - expected_photo).max() <= 2


def test_translate_refuses_it_by_name_for_a_model_trained_without_a_tolerance(
    models, jpeg_label_map, expected_photo, tmp_path
):
    result = translate_command(models / "strict", jpeg_label_map, "--out", tmp_path / "strict")
    assert result.returncode == 1
    assert f"{jpeg_label_map}: label map has" in result.stderr
    assert_refusal_names_colors_and_pixels(result.stderr, jpeg_label_map)
    out = tmp_path / "widened"
    result = translate_command(
        models / "strict", jpeg_label_map, "--out", out, "--palette-tolerance", "255", "--quiet"
    )
    assert result.returncode == 0, result.stderr
    photo = np.asarray(Image.open(out / "labels.png"), dtype=np.int16)
    assert np.abs(photo - expected_photo).max() <= 2


# -- (c) the service ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(models):
    server = LiveServer(models)
    yield server.url
    server.stop()


def upload(url: str, model: str, path: Path) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/models/{model}/translate",
        files={"image": (path.name, path.read_bytes(), "image/jpeg")},
        timeout=60,
    )


def test_the_service_lists_each_models_tolerance(server):
    listed = {m["name"]: m for m in httpx.get(f"{server}/v1/models", timeout=10).json()["models"]}
    assert listed["tolerant"]["palette_tolerance"] == 255
    assert listed["strict"]["palette_tolerance"] == 0


def test_the_service_translates_the_jpeg_upload(server, jpeg_label_map, expected_photo):
    response = upload(server, "tolerant", jpeg_label_map)
    assert response.status_code == 200, response.text
    photo = np.asarray(Image.open(io.BytesIO(response.content)), dtype=np.int16)
    assert np.abs(photo - expected_photo).max() <= 2


def test_the_service_refuses_it_for_a_model_trained_without_a_tolerance(server, jpeg_label_map):
    response = upload(server, "strict", jpeg_label_map)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["message"].startswith("labels.jpg: label map has")
    assert_refusal_names_colors_and_pixels(error["message"], jpeg_label_map)


# -- (d) the Python API ---------------------------------------------------------------------------


def test_the_python_api_translates_the_jpeg(models, jpeg_label_map, expected_photo):
    translator = pix2pix.load(models / "tolerant", runtime="torch", device="cpu")
    by_path = np.asarray(translator(jpeg_label_map), dtype=np.int16)
    assert np.array_equal(by_path, expected_photo)
    as_array = np.asarray(Image.open(jpeg_label_map).convert("RGB"))
    assert np.array_equal(translator(as_array), expected_photo)


def test_the_python_api_refuses_it_unless_told_a_tolerance(models, jpeg_label_map, expected_photo):
    translator = pix2pix.load(models / "strict", runtime="torch", device="cpu")
    with pytest.raises(InputError) as refused:
        translator(jpeg_label_map)
    assert str(refused.value).startswith(f"{jpeg_label_map}: label map has")
    assert_refusal_names_colors_and_pixels(str(refused.value), jpeg_label_map)
    widened = translator(jpeg_label_map, palette_tolerance=255)
    assert np.array_equal(np.asarray(widened, dtype=np.int16), expected_photo)
