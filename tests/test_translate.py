"""One translation path: the CLI, the service, the Python API and evaluate agree pixel for pixel,
and ``pix2pix translate`` batches, tiles, keeps sub-folders, names bad files and shows progress."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from model.spec import SPEC_FILENAME, GeneratorSpec
from model.translate import Translator
from pix2pix.cli import main
from training.evaluation.evaluate import evaluate_model


def random_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def with_train_size(model: Path, folder: Path, size: int) -> Path:
    """The same weights with another training size, which sets the size evaluate reads at."""
    shutil.copytree(model, folder)
    spec = GeneratorSpec.load(model / SPEC_FILENAME)
    GeneratorSpec.from_dict(spec.to_dict() | {"train_size": size}).save(folder / SPEC_FILENAME)
    return folder


def served(url: str, pixels: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    response = httpx.post(
        f"{url}/v1/models/photo/translate",
        files={"image": ("input.png", buffer.getvalue(), "image/png")},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


def evaluated(model: Path, pixels: np.ndarray, root: Path) -> np.ndarray:
    """evaluate's output for a one-image test split holding ``pixels`` at the training size."""
    for side in ("A", "B"):
        (root / "test" / side).mkdir(parents=True)
        Image.fromarray(pixels).save(root / "test" / side / "0000.png")
    evaluation = evaluate_model(model, root, "test", samples=1)
    return evaluation.samples[0][1]


# 32 px is the training size, 37x53 and 37x37 need padding, 600 px runs as four tiles.
@pytest.mark.parametrize("size", [(32, 32), (37, 53), (37, 37), (600, 600)])
def test_cli_service_api_and_evaluate_give_the_same_pixels(
    size, live_server, tiny_models, tmp_path, capsys
):
    pixels = random_photo(*size, seed=size[0] + size[1])
    Image.fromarray(pixels).save(tmp_path / "input.png")
    assert main(["translate", str(tiny_models / "photo"), str(tmp_path / "input.png"),
                 "--out", str(tmp_path / "out"), "--quiet"]) == 0  # fmt: skip
    from_cli = np.asarray(Image.open(tmp_path / "out" / "input.png"))
    from_service = served(live_server, pixels)
    from_api = np.asarray(Translator.load(tiny_models / "photo").translate(Image.fromarray(pixels)))
    assert from_cli.shape == (*size, 3)
    assert np.array_equal(from_cli, from_service)
    assert np.array_equal(from_cli, from_api)
    if size[0] == size[1]:  # evaluate reads square images at the model's training size
        model = with_train_size(tiny_models / "photo", tmp_path / "model", size[0])
        assert np.array_equal(from_cli, evaluated(model, pixels, tmp_path / "data"))


@pytest.fixture
def recorded_batches(monkeypatch) -> list[tuple[int, ...]]:
    """The shape of every batch the CLI's runtime is given."""
    from model import runtime

    shapes: list[tuple[int, ...]] = []
    load_model = runtime.load_model

    def load_recording(*args, **kwargs):
        loaded = load_model(*args, **kwargs)
        run = loaded.runtime

        def recording(batch: np.ndarray) -> np.ndarray:
            shapes.append(batch.shape)
            return run(batch)

        loaded.runtime = recording
        return loaded

    monkeypatch.setattr(runtime, "load_model", load_recording)
    return shapes


def translate(model: Path, *args) -> int:
    return main(["translate", str(model), *map(str, args)])


def test_images_of_equal_size_share_batches(tiny_models, tmp_path, recorded_batches):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(5):
        Image.fromarray(random_photo(40, 48, index)).save(photos / f"wide{index}.png")
    for index in range(2):
        Image.fromarray(random_photo(24, 24, index)).save(photos / f"small{index}.png")
    assert translate(tiny_models / "photo", photos, "--out", tmp_path / "out",
                     "--batch-size", "4", "--quiet") == 0  # fmt: skip
    assert sorted(recorded_batches) == [(1, 3, 40, 48), (2, 3, 24, 24), (4, 3, 40, 48)]
    sizes = {path.name: Image.open(path).size for path in (tmp_path / "out").iterdir()}
    assert len(sizes) == 7 and sizes["wide4.png"] == (48, 40) and sizes["small1.png"] == (24, 24)


def test_large_images_are_tiled_as_the_service_tiles_them(tiny_models, tmp_path, recorded_batches):
    Image.fromarray(random_photo(100, 150)).save(tmp_path / "large.png")
    assert translate(tiny_models / "photo", tmp_path / "large.png", "--out", tmp_path / "out",
                     "--tile-size", "64", "--tile-overlap", "16", "--quiet") == 0  # fmt: skip
    assert recorded_batches == [(6, 3, 64, 64)]  # 2 rows x 3 columns of tiles, one batch
    assert Image.open(tmp_path / "out" / "large.png").size == (150, 100)


def test_outputs_keep_the_input_names_and_sub_folders(tiny_models, tmp_path):
    photos = tmp_path / "photos"
    for relative in ("top.png", "day/noon.jpg", "day/late/dusk.png", ".cache/skip.png"):
        (photos / relative).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(random_photo(16, 16)).save(photos / relative)
    Image.fromarray(random_photo(16, 16)).save(tmp_path / "alone.png")
    out = tmp_path / "out"
    assert translate(tiny_models / "photo", photos, tmp_path / "alone.png", "--out", out,
                     "--format", "webp", "--quiet") == 0  # fmt: skip
    written = sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())
    assert written == ["alone.webp", "day/late/dusk.webp", "day/noon.webp", "top.webp"]


def test_a_bad_file_is_named_and_the_others_are_translated(tiny_models, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(random_photo(16, 16)).save(photos / "good.png")
    (photos / "broken.png").write_bytes(b"not an image at all")
    buffer = io.BytesIO()
    Image.fromarray(random_photo(64, 64)).save(buffer, format="PNG")
    (photos / "truncated.png").write_bytes(buffer.getvalue()[:200])
    Image.fromarray(random_photo(16, 16)).save(photos / "later.png")
    out = tmp_path / "out"
    assert translate(tiny_models / "photo", photos, "--out", out, "--quiet") == 1
    errors = capsys.readouterr().err
    assert f"{photos / 'broken.png'}: cannot identify image file" in errors
    assert f"{photos / 'truncated.png'}: " in errors
    assert "2 failed" in errors
    assert sorted(path.name for path in out.iterdir()) == ["good.png", "later.png"]


def test_a_folder_shows_a_progress_bar_unless_quiet(tiny_models, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(3):
        Image.fromarray(random_photo(16, 16, index)).save(photos / f"{index}.png")
    assert translate(tiny_models / "photo", photos, "--out", tmp_path / "out") == 0
    captured = capsys.readouterr()
    assert "translate: 100%" in captured.err and "3/3" in captured.err
    assert "translated 3 of 3 images" in captured.out
    assert translate(tiny_models / "photo", photos, "--out", tmp_path / "again", "--quiet") == 0
    assert "3/3" not in capsys.readouterr().err


@pytest.mark.parametrize("spelling", ["jpeg", "jpg"])
def test_jpeg_output_is_spelled_jpeg_and_jpg_is_its_alias(spelling, tiny_models, tmp_path):
    Image.fromarray(random_photo(16, 16)).save(tmp_path / "input.png")
    out = tmp_path / "out"
    assert translate(tiny_models / "photo", tmp_path / "input.png", "--out", out,
                     "--format", spelling, "--quiet") == 0  # fmt: skip
    with Image.open(out / "input.jpg") as written:
        assert written.format == "JPEG" and written.size == (16, 16)


def test_an_unknown_output_format_is_a_usage_error_naming_the_choices(
    tiny_models, tmp_path, capsys
):
    with pytest.raises(SystemExit) as exited:
        translate(tiny_models / "photo", tmp_path, "--out", tmp_path / "out", "--format", "gif")
    assert exited.value.code == 2
    message = capsys.readouterr().err
    assert "invalid choice: 'gif'" in message and "jpeg" in message
