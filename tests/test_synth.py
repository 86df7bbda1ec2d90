"""The procedural landscape dataset: deterministic scenes, agreeing labels and photos, layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from training.data.synth import (
    GRASS,
    LANDSCAPE_PALETTE,
    SKY,
    render_scene,
    scene_seed,
    write_synthetic_dataset,
)
from training.errors import DataError

SIZE = 64


def test_palette_ids_are_contiguous_with_distinct_names_and_colors():
    ids = [entry.id for entry in LANDSCAPE_PALETTE]
    assert ids == list(range(len(LANDSCAPE_PALETTE)))
    assert len({entry.name for entry in LANDSCAPE_PALETTE}) == len(LANDSCAPE_PALETTE)
    assert len({entry.color for entry in LANDSCAPE_PALETTE}) == len(LANDSCAPE_PALETTE)
    assert {"sky", "mountain", "water", "grass", "tree", "building"} <= {
        entry.name for entry in LANDSCAPE_PALETTE
    }


@pytest.mark.parametrize("size", [32, 64, 77])
def test_render_returns_label_map_and_rgb_photo_of_the_requested_size(size):
    labels, photo = render_scene(3, size)
    assert labels.shape == (size, size) and labels.dtype == np.uint8
    assert photo.shape == (size, size, 3) and photo.dtype == np.uint8


def test_same_seed_renders_identical_scenes_and_other_seeds_differ():
    labels, photo = render_scene(11, SIZE)
    again_labels, again_photo = render_scene(11, SIZE)
    np.testing.assert_array_equal(labels, again_labels)
    np.testing.assert_array_equal(photo, again_photo)
    other_labels, other_photo = render_scene(12, SIZE)
    assert not np.array_equal(photo, other_photo)
    assert not np.array_equal(labels, other_labels)


def test_every_label_is_a_palette_class_and_scenes_vary():
    known = {entry.id for entry in LANDSCAPE_PALETTE}
    seen: set[int] = set()
    for seed in range(40):
        labels, _ = render_scene(seed, SIZE)
        present = set(np.unique(labels).tolist())
        assert present <= known
        seen |= present
    # Forty scenes between them show nearly every kind of thing the palette names.
    assert len(seen) >= len(LANDSCAPE_PALETTE) - 2


def test_photo_is_shaded_and_textured_within_sky_and_grass():
    for seed in range(8):
        labels, photo = render_scene(seed, SIZE)
        for label in (SKY, GRASS):
            region = photo[labels == label].astype(np.float64)
            if len(region) < 100:
                continue
            assert region.std(axis=0).max() > 3.0, (seed, label)
        # Not only a gradient down the image: neighbors along a row of grass differ too.
        inside = (labels[:, 1:] == GRASS) & (labels[:, :-1] == GRASS)
        change = np.abs(np.diff(photo.astype(np.int16), axis=1)).sum(axis=2)
        assert change[inside].mean() > 2.0, seed


def test_photo_edges_follow_label_boundaries():
    # Painted regions follow the label map: color jumps where the class changes.
    across_boundaries, within_regions = [], []
    for seed in range(10):
        labels, photo = render_scene(seed, SIZE)
        change = np.abs(np.diff(photo.astype(np.int16), axis=1)).sum(axis=2)
        boundary = labels[:, 1:] != labels[:, :-1]
        across_boundaries.append(change[boundary].mean())
        within_regions.append(change[~boundary].mean())
    assert np.mean(across_boundaries) > 3 * np.mean(within_regions)


def test_labels_task_writes_palette_and_paired_label_maps_and_photos(tmp_path):
    summary = write_synthetic_dataset(tmp_path, n=5, size=SIZE, seed=7)
    assert summary["counts"] == {"train": 3, "val": 1, "test": 1}
    assert summary["seconds"] > 0 and summary["pairs_per_second"] > 0

    palette = json.loads((tmp_path / "palette.json").read_text())
    assert palette == [
        {"id": entry.id, "name": entry.name, "color": list(entry.color)}
        for entry in LANDSCAPE_PALETTE
    ]
    expected_names = {
        "train": ["00000.png", "00001.png", "00002.png"],
        "val": ["00003.png"],
        "test": ["00004.png"],
    }
    for split, names in expected_names.items():
        for side in ("A", "B"):
            assert sorted(p.name for p in (tmp_path / split / side).iterdir()) == names
        for name in names:
            labels, photo = render_scene(scene_seed(7, int(name[:5])), SIZE)
            with Image.open(tmp_path / split / "A" / name) as label_image:
                assert label_image.mode == "P"
                np.testing.assert_array_equal(np.array(label_image), labels)
                colors = np.array(label_image.getpalette()[: 3 * len(LANDSCAPE_PALETTE)])
                assert colors.reshape(-1, 3).tolist() == [
                    list(entry.color) for entry in LANDSCAPE_PALETTE
                ]
            with Image.open(tmp_path / split / "B" / name) as photo_image:
                assert photo_image.mode == "RGB"
                np.testing.assert_array_equal(np.array(photo_image), photo)


def test_color_task_writes_only_rgb_photos_per_split(tmp_path):
    summary = write_synthetic_dataset(tmp_path, n=4, size=SIZE, seed=2, task="color")
    assert summary["counts"] == {"train": 2, "val": 1, "test": 1}
    assert not (tmp_path / "palette.json").exists()
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["test/00003.png", "train/00000.png", "train/00001.png", "val/00002.png"]
    for path in tmp_path.rglob("*.png"):
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (SIZE, SIZE)


def test_same_seed_writes_identical_files_whatever_n(tmp_path):
    write_synthetic_dataset(tmp_path / "first", n=4, size=SIZE, seed=5)
    write_synthetic_dataset(tmp_path / "again", n=4, size=SIZE, seed=5)
    write_synthetic_dataset(tmp_path / "more", n=6, size=SIZE, seed=5)
    write_synthetic_dataset(tmp_path / "other", n=4, size=SIZE, seed=6)
    first = {
        p.relative_to(tmp_path / "first"): p.read_bytes()
        for p in (tmp_path / "first").rglob("*.png")
    }
    again = {
        p.relative_to(tmp_path / "again"): p.read_bytes()
        for p in (tmp_path / "again").rglob("*.png")
    }
    assert first == again
    # Scene 0 is the first training pair whatever the dataset's size.
    for side in ("A", "B"):
        scene = f"train/{side}/00000.png"
        assert (tmp_path / "more" / scene).read_bytes() == (tmp_path / "first" / scene).read_bytes()
        assert (tmp_path / "other" / scene).read_bytes() != (
            tmp_path / "first" / scene
        ).read_bytes()


def test_writing_leaves_no_temporary_files(tmp_path):
    write_synthetic_dataset(tmp_path, n=3, size=32, seed=1)
    leftovers = [
        p for p in tmp_path.rglob("*") if p.is_file() and not p.name.endswith((".png", ".json"))
    ]
    assert leftovers == []
    assert not list(tmp_path.rglob(".*"))


@pytest.mark.parametrize(
    ("n", "splits", "expected"),
    [
        (3, (0.8, 0.1, 0.1), {"train": 1, "val": 1, "test": 1}),
        (10, (0.8, 0.1, 0.1), {"train": 8, "val": 1, "test": 1}),
        (8, (0.5, 0.25, 0.25), {"train": 4, "val": 2, "test": 2}),
        (4, (1.0, 0.0, 0.0), {"train": 2, "val": 1, "test": 1}),
    ],
)
def test_split_counts_give_every_split_at_least_one_image(tmp_path, n, splits, expected):
    summary = write_synthetic_dataset(tmp_path, n=n, size=32, seed=0, task="color", splits=splits)
    assert summary["counts"] == expected
    for split, count in expected.items():
        assert len(list((tmp_path / split).glob("*.png"))) == count


@pytest.mark.parametrize(
    "arguments",
    [
        {"task": "edges"},
        {"n": 2},
        {"size": 31},
        {"splits": (0.8, 0.1, 0.05)},
        {"splits": (1.2, -0.1, -0.1)},
        {"seed": -1},
    ],
)
def test_bad_arguments_raise_data_error(tmp_path, arguments):
    options = {"n": 3, "size": 32} | arguments
    with pytest.raises(DataError):
        write_synthetic_dataset(tmp_path, **options)
    assert not list(tmp_path.rglob("*.png"))


def test_render_rejects_tiny_sizes():
    with pytest.raises(DataError):
        render_scene(0, 16)
