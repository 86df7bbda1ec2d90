"""Paired datasets: the three layouts, augmentation alignment, and every bad-data error."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import ExifTags, Image

from tests.conftest import PALETTE, palette_image, tiny_config, write_label_dataset
from training.config import set_value
from training.data.datasets import PairedDataset, data_config_for, make_spec
from training.errors import DataError


def dataset(config, split="train", train=True):
    return PairedDataset(config.data, split, make_spec(config), train=train, seed=config.seed)


def test_folders_layout_yields_one_hot_labels_and_photos(label_dataset, tmp_path):
    config = tiny_config(label_dataset, tmp_path, **{"data.input_kind": "label_map"})
    items = dataset(config)
    assert len(items) == 6
    item = items[0]
    assert item["A"].shape == (3, 32, 32)
    assert torch.all(item["A"].sum(0) == 1)  # exactly one class per pixel
    assert item["B"].shape == (3, 32, 32)
    assert item["B"].min() >= -1.0 and item["B"].max() <= 1.0


def write_aligned(root: Path, sizes, split="train") -> None:
    (root / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index, (width, height) in enumerate(sizes):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / f"{index}.png")


@pytest.mark.parametrize("direction", ["AtoB", "BtoA"])
def test_aligned_layout_splits_halves_by_direction(tmp_path, direction):
    root = tmp_path / "aligned"
    (root / "train").mkdir(parents=True)
    left = np.zeros((32, 32, 3), dtype=np.uint8)
    right = np.full((32, 32, 3), 255, dtype=np.uint8)
    Image.fromarray(np.concatenate([left, right], axis=1)).save(root / "train" / "1.png")
    config = tiny_config(
        root,
        tmp_path,
        **{"data.layout": "aligned", "data.direction": direction, "data.flip": "false"},
    )
    item = dataset(config)[0]
    a_value, b_value = (-1.0, 1.0) if direction == "AtoB" else (1.0, -1.0)
    assert torch.allclose(item["A"], torch.full_like(item["A"], a_value))
    assert torch.allclose(item["B"], torch.full_like(item["B"], b_value))


def test_colorization_layout_gives_lightness_and_ab(synth_color, tmp_path):
    config = tiny_config(
        synth_color,
        tmp_path,
        **{"data.layout": "colorization", "data.input_kind": "grayscale"},
    )
    item = dataset(config)[0]
    assert item["A"].shape == (1, 32, 32) and item["B"].shape == (2, 32, 32)
    set_value(config, "data.color_space", "rgb")
    item = dataset(config)[0]
    assert item["A"].shape == (1, 32, 32) and item["B"].shape == (3, 32, 32)


def test_photo_pairs_stay_pixel_aligned_after_augmentation(tmp_path):
    root = tmp_path / "same"
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for side in "AB":
            (root / split / side).mkdir(parents=True)
        for index in range(3):
            pixels = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
            for side in "AB":  # A and B identical: any misalignment shows as a difference
                Image.fromarray(pixels).save(root / split / side / f"{index}.png")
    config = tiny_config(root, tmp_path, **{"data.load_size": "48"})
    items = dataset(config)
    for epoch in range(4):
        items.set_epoch(epoch)
        for index in range(len(items)):
            item = items[index]
            assert torch.equal(item["A"], item["B"])


def test_label_maps_stay_aligned_and_are_never_interpolated(label_dataset, tmp_path):
    config = tiny_config(
        label_dataset, tmp_path, **{"data.input_kind": "label_map", "data.load_size": "57"}
    )
    items = dataset(config)
    colors = torch.tensor([entry["color"] for entry in PALETTE], dtype=torch.float32)
    for epoch in range(3):
        items.set_epoch(epoch)
        for index in range(len(items)):
            labels, photo = items.arrays(index)
            # Nearest-neighbour: only palette ids, no blended in-between values.
            assert set(np.unique(labels).tolist()) <= {0, 1, 2}
            # The photo is its label's color plus noise; away from edges they must agree.
            expected = colors[torch.from_numpy(labels.astype(np.int64))]
            difference = (torch.from_numpy(photo.astype(np.float32)) - expected).abs().amax(-1)
            assert (difference < 30).float().mean() > 0.85


def test_augmentation_is_reproducible_and_changes_with_the_epoch(label_dataset, tmp_path):
    config = tiny_config(label_dataset, tmp_path, **{"data.input_kind": "label_map"})
    items = dataset(config)
    first = [items[i]["B"] for i in range(len(items))]
    again = dataset(config)
    assert all(torch.equal(first[i], again[i]["B"]) for i in range(len(items)))
    items.set_epoch(1)
    assert not all(torch.equal(first[i], items[i]["B"]) for i in range(len(items)))


def test_validation_split_is_not_augmented(label_dataset, tmp_path):
    config = tiny_config(label_dataset, tmp_path, **{"data.input_kind": "label_map"})
    items = dataset(config, "val", train=False)
    items.set_epoch(3)
    a = items[0]["B"]
    items.set_epoch(7)
    assert torch.equal(a, items[0]["B"])


# -- bad data -------------------------------------------------------------------------------


def label_config(root, tmp_path):
    return tiny_config(root, tmp_path, **{"data.input_kind": "label_map"})


def test_label_maps_are_turned_upright_by_their_exif_orientation(label_dataset, tmp_path):
    # As their photos are, and as serving turns an uploaded label map: a map stored on its side
    # with an EXIF orientation must not reach training rotated against its photo.
    path = label_dataset / "train" / "A" / "0000.png"
    upright = dataset(label_config(label_dataset, tmp_path)).load_arrays(0)[0]
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # shown turned 90 degrees clockwise
    Image.open(path).transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    assert not np.array_equal(np.rot90(upright), upright)  # so a turned map would show
    read = dataset(label_config(label_dataset, tmp_path)).load_arrays(0)[0]
    np.testing.assert_array_equal(read, upright)


def test_missing_pairs_are_all_listed_both_ways(label_dataset, tmp_path):
    (label_dataset / "train" / "A" / "0001.png").unlink()
    (label_dataset / "train" / "A" / "0004.png").unlink()
    (label_dataset / "train" / "B" / "0002.png").unlink()
    with pytest.raises(DataError) as error:
        dataset(label_config(label_dataset, tmp_path))
    message = str(error.value)
    assert "in A/ without a B: 0002.png" in message
    assert "in B/ without an A: 0001.png, 0004.png" in message


def test_unreadable_image_is_named(label_dataset, tmp_path):
    bad = label_dataset / "train" / "B" / "0003.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match="0003.png: not a readable image"):
        dataset(label_config(label_dataset, tmp_path))


def test_truncated_image_is_named_when_decoded(label_dataset, tmp_path):
    bad = label_dataset / "train" / "B" / "0002.png"
    bad.write_bytes(bad.read_bytes()[:-200])
    items = dataset(label_config(label_dataset, tmp_path))
    with pytest.raises(DataError, match="0002.png: cannot decode image"):
        items[2]


def test_pair_members_of_different_sizes_are_reported(label_dataset, tmp_path):
    path = label_dataset / "train" / "B" / "0001.png"
    Image.open(path).resize((41, 40)).save(path)
    with pytest.raises(
        DataError, match=r"pair sizes differ: .*0001.png is 40x40, .*0001.png is 41x40"
    ):
        dataset(label_config(label_dataset, tmp_path))


def test_label_value_outside_palette_is_named(label_dataset, tmp_path):
    ids = np.zeros((40, 40), dtype=np.uint8)
    ids[5, 5] = 9
    palette_image(ids).save(label_dataset / "train" / "A" / "0000.png")
    items = dataset(label_config(label_dataset, tmp_path))
    with pytest.raises(
        DataError, match=r"A/0000.png: label map holds class ids not in the palette: 9"
    ):
        items[0]


def test_empty_split_is_an_error(label_dataset, tmp_path):
    for path in (label_dataset / "val" / "A").iterdir():
        path.unlink()
    for path in (label_dataset / "val" / "B").iterdir():
        path.unlink()
    with pytest.raises(DataError, match="val: no images in this split"):
        dataset(label_config(label_dataset, tmp_path), "val", train=False)


def test_missing_split_and_root_are_errors(tmp_path):
    config = tiny_config(tmp_path / "nowhere", tmp_path)
    with pytest.raises(DataError, match="dataset root not found"):
        dataset(config)
    (tmp_path / "nowhere").mkdir()
    with pytest.raises(DataError, match="split folder not found"):
        dataset(config)


def test_aligned_odd_width_and_wrong_ratio_are_reported(tmp_path):
    root = tmp_path / "aligned"
    write_aligned(root, [(64, 32), (63, 32), (80, 32)])
    config = tiny_config(root, tmp_path, **{"data.layout": "aligned"})
    with pytest.raises(DataError) as error:
        dataset(config)
    message = str(error.value)
    assert "1.png: aligned image width 63 is odd" in message
    assert "2.png: aligned image is 80x32, expected width = 2 x height (64)" in message
    assert "0.png" not in message


def test_missing_palette_file_is_named(label_dataset, tmp_path):
    (label_dataset / "palette.json").unlink()
    with pytest.raises(DataError, match="palette.json: palette file not found"):
        make_spec(label_config(label_dataset, tmp_path))
    (label_dataset / "palette.json").write_text(json.dumps([{"id": 0}]))
    with pytest.raises(DataError, match="invalid palette"):
        make_spec(label_config(label_dataset, tmp_path))


def test_palette_outside_the_data_root_is_found_from_the_working_directory(
    label_dataset, tmp_path, monkeypatch
):
    # A read-only or downloaded dataset without palette.json: configs/<name>-palette.json.
    outside = tmp_path / "configs" / "labels-palette.json"
    outside.parent.mkdir()
    (label_dataset / "palette.json").rename(outside)
    monkeypatch.chdir(tmp_path)
    config = label_config(label_dataset, tmp_path)
    set_value(config, "data.palette", "configs/labels-palette.json")
    assert [c.id for c in make_spec(config).palette] == [c["id"] for c in PALETTE]
    set_value(config, "data.palette", "configs/missing.json")
    with pytest.raises(DataError, match="nor configs/missing.json from the working directory"):
        make_spec(config)


def test_dataloader_surfaces_worker_errors_with_the_file_name(label_dataset, tmp_path):
    bad = label_dataset / "train" / "B" / "0005.png"
    bad.write_bytes(bad.read_bytes()[:-200])
    items = dataset(label_config(label_dataset, tmp_path))
    loader = torch.utils.data.DataLoader(items, batch_size=2, num_workers=1)
    with pytest.raises(DataError, match="0005.png"):
        list(loader)


def test_more_than_one_problem_is_reported_at_once(tmp_path):
    root = write_label_dataset(tmp_path / "many")
    for index in (1, 2):
        path = root / "train" / "B" / f"000{index}.png"
        Image.open(path).resize((30, 40)).save(path)
    with pytest.raises(DataError) as error:
        dataset(label_config(root, tmp_path))
    assert "0001.png" in str(error.value) and "0002.png" in str(error.value)


def test_evaluation_reads_jpeg_ed_label_colors_within_the_tolerance(label_dataset, tmp_path):
    # Facades-style maps: the label colors are near, not equal to, the palette's.
    path = label_dataset / "test" / "A" / "0000.png"
    spec = make_spec(label_config(label_dataset, tmp_path))
    exact_config = data_config_for(spec, label_dataset, "test")
    exact, _ = PairedDataset(exact_config, "test", spec, train=False).arrays(0)
    with Image.open(path) as image:
        ids = np.asarray(image)
    colors = np.array([entry["color"] for entry in PALETTE], dtype=np.int16)
    Image.fromarray((colors[ids] + 3).clip(0, 255).astype(np.uint8)).save(path)
    with pytest.raises(Exception, match="not in the palette"):
        PairedDataset(data_config_for(spec, label_dataset, "test"), "test", spec, train=False)[0]
    config = data_config_for(spec, label_dataset, "test", palette_tolerance=255)
    a, _ = PairedDataset(config, "test", spec, train=False).arrays(0)
    np.testing.assert_array_equal(a, exact)


def test_config_description_travels_in_the_spec(label_dataset, tmp_path):
    config = label_config(label_dataset, tmp_path)
    assert make_spec(config).extra == {}
    set_value(config, "description", "Painted facades: CMP Facades, 400 photos.")
    spec = make_spec(config)
    assert spec.extra["description"] == "Painted facades: CMP Facades, 400 photos."
    assert type(spec).from_dict(spec.to_dict()).extra == spec.extra


def test_int8_calibration_reads_label_colors_as_the_run_did(label_dataset, tmp_path):
    from model.checkpoint import save_model_folder
    from model.networks import build_generator
    from training.data.calibration import calibration_inputs

    colors = np.array([entry["color"] for entry in PALETTE], dtype=np.int16)
    for path in sorted((label_dataset / "train" / "A").glob("*.png")):
        with Image.open(path) as image:
            ids = np.asarray(image)
        Image.fromarray((colors[ids] + 2).clip(0, 255).astype(np.uint8)).save(path)
    config = label_config(label_dataset, tmp_path)
    spec = make_spec(config)
    run = tmp_path / "run"
    save_model_folder(run, build_generator(spec.architecture, spec.in_channels, 3), spec)
    (run / "config.toml").write_text(config.to_toml())
    with pytest.raises(Exception, match="not in the palette"):
        calibration_inputs(run, None, 2)
    set_value(config, "data.palette_tolerance", "8")
    (run / "config.toml").write_text(config.to_toml())
    inputs = calibration_inputs(run, None, 2)
    assert inputs.shape[:2] == (2, len(PALETTE)) and set(np.unique(inputs)) <= {-1.0, 1.0, 0.0}
