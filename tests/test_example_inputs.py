"""Scenes and examples listed in a spec: found in the model folder, refused when malformed or
missing, carried by export, and shipped by every demo model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.errors import SpecError
from model.example_inputs import copy_example_inputs, example_inputs
from model.model_folders import model_version
from model.spec import GeneratorArchitecture, GeneratorSpec, LabelClass

MODELS = Path(__file__).resolve().parent.parent / "models"
PALETTE = (LabelClass(0, "sky", (90, 150, 230)), LabelClass(1, "grass", (60, 170, 60)))
ARCHITECTURE = GeneratorArchitecture(num_downs=3, base_width=4)


def label_spec(**extra) -> GeneratorSpec:
    return GeneratorSpec(
        ARCHITECTURE, 2, 3, input_kind="label_map", palette=PALETTE, one_hot=True, extra=extra
    )


def write_example(folder: Path, name: str) -> Path:
    path = folder / "examples" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(path)
    return path


def test_listed_scenes_and_examples_are_found_in_the_folder(tmp_path):
    for name in ("hills.png", "valley.png", "photo.jpg"):
        write_example(tmp_path, name)
    spec = label_spec(
        scenes=[{"name": "Hills", "file": "examples/hills.png"}],
        examples=[
            {"name": "Valley", "file": "examples/valley.png"},
            {"name": "A photo", "file": "examples/photo.jpg"},
        ],
    )
    found = example_inputs(tmp_path, spec)
    assert [(e.kind, e.name, e.file_name) for e in found] == [
        ("scene", "Hills", "hills.png"),
        ("example", "Valley", "valley.png"),
        ("example", "A photo", "photo.jpg"),
    ]
    assert [e.media_type for e in found] == ["image/png", "image/png", "image/jpeg"]
    assert found[0].path == tmp_path / "examples" / "hills.png"
    assert example_inputs(tmp_path, label_spec()) == []  # listing nothing is fine


def test_a_missing_example_file_is_named(tmp_path):
    spec = label_spec(examples=[{"name": "Gone", "file": "examples/gone.png"}])
    with pytest.raises(SpecError, match=r"extra\.examples\[0\] \('Gone'\).*examples/gone\.png"):
        example_inputs(tmp_path, spec)


@pytest.mark.parametrize(
    "entry, problem",
    [
        ({"name": "Up", "file": "examples/../spec.json"}, "must be examples/<file name>"),
        ({"name": "Up", "file": "../secret.png"}, "must be examples/<file name>"),
        ({"name": "Root", "file": "/etc/passwd"}, "must be examples/<file name>"),
        ({"name": "Deep", "file": "examples/more/a.png"}, "must be examples/<file name>"),
        ({"name": "Hidden", "file": "examples/.a.png"}, "must be examples/<file name>"),
        ({"name": "Text", "file": "examples/notes.txt"}, "not one of the image types"),
        ({"name": "", "file": "examples/a.png"}, "name must be text"),
        ({"file": "examples/a.png"}, "exactly 'name' and 'file'"),
        ({"name": "A", "file": "examples/a.png", "size": 3}, "exactly 'name' and 'file'"),
        ("examples/a.png", "exactly 'name' and 'file'"),
    ],
)
def test_malformed_entries_are_refused(tmp_path, entry, problem):
    write_example(tmp_path, "a.png")
    with pytest.raises(SpecError, match=r"extra\.examples\[0\]") as error:
        example_inputs(tmp_path, label_spec(examples=[entry]))
    assert problem in str(error.value)


def test_listing_must_be_a_list_without_repeats(tmp_path):
    write_example(tmp_path, "a.png")
    with pytest.raises(SpecError, match="extra.scenes must be a list"):
        example_inputs(tmp_path, label_spec(scenes={"name": "A", "file": "examples/a.png"}))
    entry = {"name": "A", "file": "examples/a.png"}
    with pytest.raises(SpecError, match="examples/a.png is listed twice"):
        example_inputs(tmp_path, label_spec(scenes=[entry], examples=[entry]))


def test_scenes_belong_to_label_map_models(tmp_path):
    write_example(tmp_path, "a.png")
    photo = GeneratorSpec(
        ARCHITECTURE, 3, 3, extra={"scenes": [{"name": "A", "file": "examples/a.png"}]}
    )
    with pytest.raises(SpecError, match="takes photo inputs"):
        example_inputs(tmp_path, photo)


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    outside = write_example(tmp_path / "elsewhere", "secret.png")
    (tmp_path / "model" / "examples").mkdir(parents=True)
    (tmp_path / "model" / "examples" / "a.png").symlink_to(outside)
    spec = label_spec(examples=[{"name": "A", "file": "examples/a.png"}])
    with pytest.raises(SpecError, match="leads outside"):
        example_inputs(tmp_path / "model", spec)


def test_examples_travel_with_export_and_count_in_the_version(tmp_path):
    from model.export import export_model
    from tests.conftest import write_tiny_models

    source = write_tiny_models(tmp_path / "models") / "labels"
    before = model_version(source)
    write_example(source, "hills.png")
    assert model_version(source) != before  # a new example is a new version to serve
    spec = GeneratorSpec.load(source)
    listing = [{"name": "Hills", "file": "examples/hills.png"}]
    GeneratorSpec.from_dict(spec.to_dict() | {"extra": {"scenes": listing}}).save(source)

    result = export_model(source, tmp_path / "exported", format="safetensors")
    exported = GeneratorSpec.load(result.folder)
    assert exported.extra["scenes"] == listing
    copied = example_inputs(result.folder, exported)
    assert copied[0].path.read_bytes() == (source / "examples" / "hills.png").read_bytes()
    assert copy_example_inputs(source, exported, tmp_path / "copy") == 1


@pytest.mark.parametrize("name", ["facades", "labels2photo", "gray2color"])
def test_demo_models_ship_scenes_and_examples(name):
    folder = MODELS / name
    spec = GeneratorSpec.load(folder)
    listed = example_inputs(folder, spec)
    scenes = [e for e in listed if e.kind == "scene"]
    examples = [e for e in listed if e.kind == "example"]
    assert 2 <= len(examples) <= 3
    sources = (folder / "examples" / "SOURCES.md").read_text(encoding="utf-8")
    assert all(f"`{e.file_name}`" in sources for e in listed), "each file's source is named"
    if spec.input_kind != "label_map":
        assert not scenes
        for example in examples:  # real photos, small, in grayscale
            with Image.open(example.path) as image:
                assert image.mode == "L" and max(image.size) <= 256
        return
    assert 2 <= len(scenes) <= 3
    colors = {label.color for label in spec.palette}
    for example in listed:
        pixels = np.asarray(Image.open(example.path).convert("RGB")).reshape(-1, 3)
        used = {tuple(int(c) for c in color) for color in np.unique(pixels, axis=0)}
        assert used <= colors, f"{example.file_name} has colors outside the palette"
        if example.kind == "scene":
            assert len(used) >= 3, f"{example.file_name} paints {len(used)} classes"


def test_demo_examples_stay_small():
    files = [path for path in MODELS.glob("*/examples/*") if path.is_file()]
    assert files and sum(path.stat().st_size for path in files) < 600_000
