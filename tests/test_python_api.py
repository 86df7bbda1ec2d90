"""``import pix2pix``: translators that give back what they are given, at its size, tiled and
batched as the command line does; train, export and evaluate as the verbs; no torch on import
or for ONNX models; and the README's example, run as it is written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pix2pix
from model.errors import CheckpointError, InputError
from pix2pix.cli import main
from tests.conftest import tiny_config, write_label_dataset
from training.config import ConfigError
from training.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def random_photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def run_python(script: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def recording(translator) -> list[tuple[int, ...]]:
    """The shape of every batch ``translator`` runs from now on."""
    shapes: list[tuple[int, ...]] = []
    run = translator.runtime

    def record(batch: np.ndarray) -> np.ndarray:
        shapes.append(batch.shape)
        return run(batch)

    translator.runtime = record
    return shapes


@pytest.fixture(scope="module")
def photo_translator(tiny_models):
    return pix2pix.load(tiny_models / "photo", runtime="torch", device="cpu")


# -- what import costs -------------------------------------------------------------------------


def test_importing_pix2pix_imports_no_torch():
    result = run_python(
        """
        import sys
        import pix2pix

        assert callable(pix2pix.load) and callable(pix2pix.train)
        assert "torch" not in sys.modules, "import pix2pix imported torch"
        assert pix2pix.InputError.__module__ == "model.errors"  # found on first use
        assert "torch" not in sys.modules, "pix2pix.InputError imported torch"
        print("no torch")
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no torch" in result.stdout


def test_an_onnx_model_folder_translates_without_importing_torch():
    result = run_python(
        """
        import sys
        import numpy as np
        import pix2pix

        translator = pix2pix.load("models/labels2photo")
        assert translator.runtime.name == "onnx", translator.runtime.name
        outputs = translator([np.zeros((40, 60), np.uint8), np.ones((20, 30), np.uint8)])
        assert [output.shape for output in outputs] == [(40, 60, 3), (20, 30, 3)]
        assert "torch" not in sys.modules, "an ONNX model imported torch"
        print("no torch")
        """
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no torch" in result.stdout


def test_the_readme_example_runs_as_written(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## From Python\n", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    (tmp_path / "models").symlink_to(ROOT / "models")  # the example runs from the repository root
    result = run_python(code + "\nimport sys\nassert 'torch' not in sys.modules\n", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("landscape.png", "gray.png", "colorized.png"):
        assert Image.open(tmp_path / name).size == (384, 256), name
    colorized = np.asarray(Image.open(tmp_path / "colorized.png").convert("RGB"), dtype=np.int16)
    assert np.abs(colorized - colorized.mean(axis=2, keepdims=True)).max() > 10  # not gray


# -- translating -------------------------------------------------------------------------------


def test_each_input_kind_comes_back_as_the_same_kind_and_size(photo_translator, tmp_path):
    pixels = random_photo(37, 53)
    Image.fromarray(pixels).save(tmp_path / "photo.png")

    from_array = photo_translator(pixels)
    from_image = photo_translator(Image.fromarray(pixels))
    from_path = photo_translator(tmp_path / "photo.png")
    from_text = photo_translator(str(tmp_path / "photo.png"))

    assert isinstance(from_array, np.ndarray)
    assert from_array.shape == (37, 53, 3) and from_array.dtype == np.uint8
    for image in (from_image, from_path, from_text):
        assert isinstance(image, Image.Image) and image.size == (53, 37) and image.mode == "RGB"
        assert np.array_equal(np.asarray(image), from_array)


def test_gray_and_rgba_arrays_read_as_their_images(photo_translator):
    gray = random_photo(24, 40)[..., 0]
    as_rgb = photo_translator(np.repeat(gray[..., None], 3, axis=2))
    assert np.array_equal(photo_translator(gray), as_rgb)
    assert np.array_equal(photo_translator(gray[..., None]), as_rgb)
    opaque = np.concatenate([random_photo(24, 40), np.full((24, 40, 1), 255, np.uint8)], axis=2)
    assert np.array_equal(photo_translator(opaque), photo_translator(opaque[..., :3]))


def test_label_maps_are_class_ids_or_palette_colors(tiny_models):
    translator = pix2pix.load(tiny_models / "labels", runtime="torch", device="cpu")
    palette = translator.spec.palette
    ids = np.zeros((30, 45), dtype=np.uint8)
    ids[15:] = palette[1].id
    colors = np.array([label.color for label in palette], dtype=np.uint8)[ids]
    from_ids = translator(ids)
    assert from_ids.shape == (30, 45, 3)
    assert np.array_equal(translator(colors), from_ids)
    with pytest.raises(InputError, match="not in the palette"):
        translator(np.full((8, 8), 200, dtype=np.uint8))


def test_a_grayscale_colorizer_keeps_the_input_lightness(tiny_models):
    translator = pix2pix.load(tiny_models / "gray", runtime="torch", device="cpu")
    assert translator.spec.input_kind == "grayscale" and translator.spec.train_size == 32
    gray = Image.fromarray(random_photo(33, 20)[..., 0])
    colorized = translator(gray)
    assert colorized.size == (20, 33)
    lightness = np.asarray(colorized.convert("L"), dtype=np.int16)
    assert np.abs(lightness - np.asarray(gray, dtype=np.int16)).mean() < 8


def test_a_list_comes_back_as_a_list_and_runs_as_batches(tiny_models, tmp_path):
    translator = pix2pix.load(tiny_models / "photo", runtime="torch", device="cpu", batch_size=4)
    batches = recording(translator)
    wide = [random_photo(40, 48, seed) for seed in range(5)]
    small = [Image.fromarray(random_photo(24, 24, seed)) for seed in range(2)]
    small[1].save(tmp_path / "small.png")
    inputs = [wide[0], small[0], *wide[1:], tmp_path / "small.png"]

    outputs = translator(inputs)

    assert sorted(batches) == [(1, 3, 40, 48), (2, 3, 24, 24), (4, 3, 40, 48)]
    assert isinstance(outputs, list) and len(outputs) == len(inputs)
    assert [type(output) for output in outputs[:2]] == [np.ndarray, Image.Image]
    assert isinstance(outputs[-1], Image.Image) and outputs[-1].size == (24, 24)
    assert all(output.shape == (40, 48, 3) for output in outputs[2:-1])
    assert np.array_equal(outputs[3], translator(wide[2]))  # batching changes no pixel
    assert translator((wide[0],))[0].shape == (40, 48, 3)  # a tuple is a list too
    assert translator([]) == []


def test_a_large_image_is_tiled_with_the_same_pixels_as_the_command_line(tiny_models, tmp_path):
    Image.fromarray(random_photo(100, 150)).save(tmp_path / "large.png")
    assert main(["translate", str(tiny_models / "photo"), str(tmp_path / "large.png"),
                 "--out", str(tmp_path / "out"), "--tile-size", "64", "--tile-overlap", "16",
                 "--runtime", "torch", "--quiet"]) == 0  # fmt: skip
    translator = pix2pix.load(
        tiny_models / "photo", runtime="torch", device="cpu", tile_size=64, tile_overlap=16
    )
    batches = recording(translator)

    tiled = translator(tmp_path / "large.png")

    assert batches == [(6, 3, 64, 64)]  # 2 rows x 3 columns of tiles, one batch
    assert tiled.size == (150, 100)
    assert np.array_equal(np.asarray(tiled), np.asarray(Image.open(tmp_path / "out/large.png")))


# -- clear errors ------------------------------------------------------------------------------


def test_a_missing_or_unreadable_file_is_named(photo_translator, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path / 'nope.png'}: no such")):
        photo_translator(tmp_path / "nope.png")
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'broken.png'}: cannot identify")):
        photo_translator([random_photo(8, 8), tmp_path / "broken.png"])
    with pytest.raises(InputError, match="is a folder"):
        photo_translator(tmp_path)


@pytest.mark.parametrize(
    ("array", "problem"),
    [
        (np.zeros((16, 16, 3), np.float32), "must be uint8 .* not float32"),
        (np.zeros((16, 16), np.uint16), "must be uint8 .* not uint16"),
        (np.zeros((2, 16, 16, 3), np.uint8), r"not \(2, 16, 16, 3\) \(for several images, pass a"),
        (np.zeros((16, 16, 2), np.uint8), r"\(H, W, 4\), not \(16, 16, 2\)"),
        (np.zeros(16, np.uint8), r"not \(16,\)"),
        (np.zeros((0, 16), np.uint8), "must hold pixels"),
    ],
)
def test_an_unusable_array_is_refused_with_the_reason(photo_translator, array, problem):
    with pytest.raises(InputError, match=problem):
        photo_translator(array)


def test_a_bad_item_in_a_list_is_numbered_and_a_wrong_type_is_refused(photo_translator):
    with pytest.raises(InputError, match="item 1: an array input must be uint8"):
        photo_translator([random_photo(8, 8), np.zeros((8, 8), np.float64)])
    with pytest.raises(TypeError, match="cannot translate a bytes"):
        photo_translator(b"\x89PNG")
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        pix2pix.Translator(photo_translator.runtime, photo_translator.spec, batch_size=0)


def test_loading_a_missing_model_raises_what_the_command_line_reports(tmp_path, capsys):
    with pytest.raises(CheckpointError) as raised:
        pix2pix.load(tmp_path / "no-model")
    assert main(["translate", str(tmp_path / "no-model"), str(tmp_path), "--out", "o"]) == 1
    assert str(raised.value) in capsys.readouterr().err


# -- train, export, evaluate -------------------------------------------------------------------


def test_train_export_and_evaluate_make_what_the_verbs_make(tmp_path, monkeypatch, capsys):
    data = write_label_dataset(tmp_path / "data", counts=(4, 2, 2), size=36)
    config = tiny_config(data, tmp_path / "runs", name="api", log_every="1")

    summary = pix2pix.train(config, max_steps=2, progress=False)

    run = tmp_path / "runs" / "api"
    assert summary["step"] == 2 and Path(summary["run_dir"]) == run
    assert config.train.max_steps != 2  # the given Config is left as it was
    for name in ("config.toml", "spec.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    resumed = pix2pix.train(resume_run=run, **{"train.max_steps": 3}, progress=False)
    assert resumed["step"] == 3

    monkeypatch.chdir(tmp_path)
    exported = pix2pix.export(run)  # to models/<run name>, as the command line
    assert exported.folder.resolve() == (tmp_path / "models" / "api").resolve()
    assert {path.name for path in exported.folder.iterdir()} >= {"spec.json"}
    translated = pix2pix.load(exported.folder, runtime="torch", device="cpu")(
        np.zeros((20, 28), np.uint8)
    )
    assert translated.shape == (20, 28, 3)

    evaluation = pix2pix.evaluate(run, data, "test", tmp_path / "api-report", device="cpu")
    assert main(["evaluate", str(run), "--data", str(data), "--out", str(tmp_path / "cli-report"),
                 "--device", "cpu", "--quiet"]) == 0  # fmt: skip
    assert evaluation.count == 2
    from_api = json.loads((tmp_path / "api-report" / "metrics.json").read_text())
    from_cli = json.loads((tmp_path / "cli-report" / "metrics.json").read_text())
    assert from_api["models"][0]["metrics"] == from_cli["models"][0]["metrics"]
    assert from_api["models"][0]["metrics"]["l1"] == pytest.approx(evaluation.metrics["l1"])
    assert (tmp_path / "api-report" / "index.html").is_file()


def test_train_raises_the_errors_the_command_line_reports(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        pix2pix.train(tmp_path / "missing.toml")
    config = tmp_path / "run.toml"
    config.write_text("")
    with pytest.raises(ConfigError, match="unknown option --bacth_size"):
        pix2pix.train(config, bacth_size=2)
    with pytest.raises(ConfigError, match="needs a config"):
        pix2pix.train()
    data = write_label_dataset(tmp_path / "data", counts=(2, 1, 1))
    (data / "train" / "B" / "0000.png").unlink()
    with pytest.raises(DataError, match="in A/ without a B: 0000.png"):
        pix2pix.train(tiny_config(data, tmp_path / "runs"), progress=False)
