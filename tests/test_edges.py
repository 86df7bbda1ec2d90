"""``pix2pix data edges``: edge maps of shapes drawn where the shapes' borders are, the folders
layout, seeded splits, byte-identical reruns, every bad input refused by name, and a training
run that reads the result."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pix2pix.cli import main
from pix2pix.commands.data import _EDGE_SETTINGS
from tests.conftest import tiny_config
from training.config import DataConfig, load_config
from training.data.edges import (
    EdgeOptions,
    cut_splits,
    edge_map,
    parse_split,
    write_edges_dataset,
)
from training.errors import DataError

SIZE = 48


def shapes(index: int, size: int = SIZE) -> tuple[np.ndarray, np.ndarray]:
    """A flat photo with a dark rectangle and a red disc (placed by ``index``), and the mask of
    the two shapes; nothing touches the frame."""
    rng = np.random.default_rng(index)
    mask = np.zeros((size, size), dtype=bool)
    top, left = rng.integers(6, 12, 2)
    mask[top : top + 14, left : left + 16] = True
    rows, columns = np.mgrid[:size, :size]
    center = rng.integers(30, 36, 2)
    disc = (rows - center[0]) ** 2 + (columns - center[1]) ** 2 <= 7**2
    photo = np.full((size, size, 3), (210, 215, 200), dtype=np.uint8)
    photo[mask] = (40, 50, 60)
    photo[disc] = (220, 30, 30)
    return photo, mask | disc


def borders(mask: np.ndarray) -> np.ndarray:
    """Pixels on either side of the mask's outline."""
    return ndimage.binary_dilation(mask) & ~ndimage.binary_erosion(mask)


def write_photos(folder: Path, count: int, size: int = SIZE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.fromarray(shapes(index, size)[0]).save(folder / f"photo{index:02d}.png")
    return folder


def files(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*.*")}


@pytest.mark.parametrize("method", ["canny", "xdog"])
def test_the_edge_map_is_white_with_dark_lines_only_along_the_shapes_borders(method):
    photo, mask = shapes(0)
    edges = edge_map(photo, EdgeOptions(method=method))
    assert edges.shape == mask.shape and edges.dtype == np.uint8
    dark = edges < 128
    outline = borders(mask)
    # Every dark pixel is on an outline (XDoG's lines are up to 3 px wide at corners)...
    near = ndimage.binary_dilation(outline, iterations=1 if method == "canny" else 3)
    assert dark.any() and not (dark & ~near).any()
    # ...and the outline is drawn nearly all the way round.
    drawn = ndimage.binary_dilation(dark, iterations=2)
    assert (drawn & outline).sum() >= 0.9 * outline.sum()
    assert dark.mean() < 0.2
    far = ~ndimage.binary_dilation(outline, iterations=4)
    assert (edges[far] == 255).all()


def test_pairs_are_written_in_the_folders_layout(tmp_path):
    photos = write_photos(tmp_path / "photos", 10)
    summary = write_edges_dataset(photos, tmp_path / "out", size=SIZE, split=(0.6, 0.2, 0.2))
    out = tmp_path / "out"
    assert summary["pairs"] == 10 and summary["splits"] == {"train": 6, "val": 2, "test": 2}
    stems = []
    for split, count in summary["splits"].items():
        a_files = sorted(path.name for path in (out / split / "A").iterdir())
        assert a_files == sorted(path.name for path in (out / split / "B").iterdir())
        assert len(a_files) == count
        stems += [Path(name).stem for name in a_files]
    assert sorted(stems) == [f"photo{index:02d}" for index in range(10)]
    edges = Image.open(out / "train" / "A" / f"{stems[0]}.png")
    photo = Image.open(out / "train" / "B" / f"{stems[0]}.png")
    assert (edges.mode, edges.size, photo.mode, photo.size) == (
        "L",
        (SIZE,) * 2,
        "RGB",
        (SIZE,) * 2,
    )
    # At the photo's own size B is the photo itself and A its edge map.
    original, _ = shapes(int(stems[0][-2:]))
    assert np.array_equal(np.asarray(photo), original)
    assert np.array_equal(np.asarray(edges), edge_map(original, EdgeOptions()))
    manifest = json.loads((out / "edges.json").read_text())
    assert manifest["method"] == "canny" and manifest["pairs"] == summary["splits"]
    assert manifest["options"] == {"canny_sigma": 1.0, "canny_low": 60.0, "canny_high": 150.0}


def test_photos_are_resized_by_the_shorter_side_and_center_cropped(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    # 60x40, in thirds: red, green, blue. Shorter side 40 -> 20 makes it 30x20; the centered
    # 20 px square keeps the last 5 columns of red and the first 5 of blue.
    wide = np.zeros((40, 60, 3), dtype=np.uint8)
    wide[:, :20, 0] = wide[:, 20:40, 1] = wide[:, 40:, 2] = 255
    Image.fromarray(wide).save(photos / "wide.png")
    Image.fromarray(wide[:10, :10]).save(photos / "small.png")
    summary = write_edges_dataset(photos, tmp_path / "out", size=20, split=(1.0, 0.0, 0.0))
    square = np.asarray(Image.open(tmp_path / "out" / "train" / "B" / "wide.png"), dtype=int)
    assert square.shape == (20, 20, 3)
    assert square[10, 1].argmax() == 0 and square[10, 10].argmax() == 1
    assert square[10, 18].argmax() == 2
    assert summary["upscaled"] == 1  # small.png, 10 px, enlarged to 20
    assert not (tmp_path / "out" / "val").exists()


def test_reruns_are_byte_identical_and_the_seed_only_moves_photos_between_splits(tmp_path):
    photos = write_photos(tmp_path / "photos", 8)
    for name in ("first", "second"):
        write_edges_dataset(photos, tmp_path / name, size=SIZE)
    assert files(tmp_path / "first") == files(tmp_path / "second")
    write_edges_dataset(photos, tmp_path / "seed1", size=SIZE, seed=1)
    first, other = files(tmp_path / "first"), files(tmp_path / "seed1")
    assert set(first) != set(other)

    def by_stem(tree: dict[str, bytes]) -> dict[str, bytes]:
        return {"/".join(key.split("/")[1:]): value for key, value in tree.items() if "/" in key}

    assert by_stem(first) == by_stem(other)


@pytest.mark.parametrize(
    ("total", "fractions", "counts"),
    [
        (432, (0.8, 0.1, 0.1), (346, 43, 43)),
        (10, (0.8, 0.1, 0.1), (8, 1, 1)),
        (3, (0.8, 0.1, 0.1), (1, 1, 1)),  # each split with a share gets a photo
        (7, (0.5, 0.5, 0.0), (3, 4, 0)),
        (5, (1.0, 0.0, 0.0), (5, 0, 0)),
    ],
)
def test_split_counts_round_the_fractions_and_fill_every_split_with_a_share(
    total, fractions, counts
):
    photos = [Path(f"{index:03d}.jpg") for index in range(total)]
    dealt = cut_splits(photos, fractions)
    assert tuple(len(dealt[split]) for split in ("train", "val", "test")) == counts
    assert sum(counts) == total


def test_the_split_is_a_seeded_shuffle_and_max_images_takes_its_first_photos(tmp_path):
    photos = write_photos(tmp_path / "photos", 12)

    def assignment(seed: int, max_images: int = 0, name: str = "") -> dict[str, set[str]]:
        out = tmp_path / f"out-{seed}-{max_images}{name}"
        write_edges_dataset(photos, out, size=SIZE, seed=seed, max_images=max_images)
        return {
            split.name: {path.stem for path in (split / "A").iterdir()}
            for split in sorted(out.iterdir())
            if split.is_dir()
        }

    zero, one = assignment(0), assignment(1)
    assert assignment(0, name="again") == zero and one != zero
    assert {len(stems) for stems in zero.values()} == {10, 1}
    assert (
        set().union(*zero.values()) == set().union(*one.values())
        and len(set().union(*zero.values())) == 12
    )
    four = assignment(0, max_images=4)
    assert sum(len(stems) for stems in four.values()) == 4
    assert {split: len(stems) for split, stems in four.items()} == {"train": 2, "val": 1, "test": 1}


def test_an_unreadable_photo_is_refused_by_name_unless_skipped(tmp_path, capsys):
    photos = write_photos(tmp_path / "photos", 6)
    (photos / "broken.jpg").write_bytes(b"not a jpeg at all")
    whole = (photos / "photo00.png").read_bytes()
    (photos / "truncated.png").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataError, match="2 unreadable") as error:
        write_edges_dataset(photos, tmp_path / "out", size=SIZE)
    assert "broken.jpg" in str(error.value) and "truncated.png" in str(error.value)
    assert "--skip-unreadable" in str(error.value)
    assert not (tmp_path / "out").exists()

    code = main(["data", "edges", str(photos), "--out", str(tmp_path / "out"), "--quiet",
                 "--size", str(SIZE), "--skip-unreadable"])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "skipped unreadable photo" in printed and "broken.jpg" in printed
    assert "truncated.png" in printed and "wrote 6 canny" in printed
    manifest = json.loads((tmp_path / "out" / "edges.json").read_text())
    assert len(manifest["skipped"]) == 2


def test_missing_empty_and_ambiguous_photo_folders_are_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        write_edges_dataset(tmp_path / "nowhere", tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    with pytest.raises(DataError, match=r"no images .* found in .*empty$"):
        write_edges_dataset(empty, tmp_path / "out")
    (empty / "train").mkdir()
    with pytest.raises(DataError, match="subfolders are not searched"):
        write_edges_dataset(empty, tmp_path / "out")
    photos = write_photos(tmp_path / "photos", 3)
    Image.fromarray(shapes(9)[0]).save(photos / "photo01.jpg")
    with pytest.raises(DataError, match=r"share a stem.*photo01.jpg, photo01.png"):
        write_edges_dataset(photos, tmp_path / "out")
    (photos / "photo01.jpg").unlink()
    with pytest.raises(DataError, match="2 photo.* cannot fill the 3 splits"):
        write_edges_dataset(photos, tmp_path / "out", max_images=2)


def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path):
    photos = write_photos(tmp_path / "photos", 5)
    out = tmp_path / "out"
    (out / "train" / "A").mkdir(parents=True)
    (out / "train" / "A" / "stale.png").write_bytes(b"from an earlier run")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="is not empty; pass --overwrite"):
        write_edges_dataset(photos, out, size=SIZE)
    write_edges_dataset(photos, out, size=SIZE, overwrite=True)
    assert not (out / "train" / "A" / "stale.png").exists()
    assert (out / "notes.txt").read_text() == "mine"
    assert len(list((out / "train" / "A").iterdir())) == 3
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match="is a file, not a folder"):
        write_edges_dataset(photos, tmp_path / "file")


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"canny_low": 120.0, "canny_high": 80.0}, "--canny-high must be >= --canny-low"),
        ({"canny_low": -1.0}, "--canny-low must be >= 0"),
        ({"canny_sigma": -0.5}, "--canny-sigma must be >= 0"),
        ({"method": "xdog", "xdog_k": 1.0}, r"--xdog-k must be > 1"),
        ({"method": "xdog", "xdog_tau": 1.5}, r"--xdog-tau must be in \(0, 1\]"),
        ({"method": "xdog", "xdog_phi": 0.0}, "--xdog-phi must be > 0"),
        ({"method": "xdog", "xdog_sigma": 0.0}, "--xdog-sigma must be > 0"),
        ({"method": "xdog", "xdog_epsilon": 2.0}, r"--xdog-epsilon must be in \(-1, 1\)"),
        ({"xdog_phi": float("nan")}, "--xdog-phi must be a finite number"),
        ({"method": "sobel"}, "--method must be one of canny, xdog, not 'sobel'"),
    ],
)
def test_bad_edge_settings_are_refused_by_flag(tmp_path, settings, message):
    with pytest.raises(DataError, match=message):
        write_edges_dataset(tmp_path, tmp_path / "out", EdgeOptions(**settings))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.8,0.2", "three fractions"),
        ("a,b,c", "three fractions"),
        ("0.5,0.3,0.1", "must sum to 1"),
        ("-0.1,0.6,0.5", "numbers >= 0"),
        ("0,0.5,0.5", "puts nothing in train"),
    ],
)
def test_bad_splits_are_refused(text, message):
    with pytest.raises(DataError, match=message):
        parse_split(text)


def test_bad_sizes_and_counts_are_refused(tmp_path):
    photos = write_photos(tmp_path / "photos", 3)
    with pytest.raises(DataError, match="--size must be at least 8"):
        write_edges_dataset(photos, tmp_path / "out", size=4)
    with pytest.raises(DataError, match="--max-images must be >= 0"):
        write_edges_dataset(photos, tmp_path / "out", max_images=-1)


def test_the_command_refuses_the_other_methods_settings_and_reports_errors(tmp_path, capsys):
    photos = write_photos(tmp_path / "photos", 3)
    command = ["data", "edges", str(photos), "--out", str(tmp_path / "out"), "--quiet"]
    assert main([*command, "--xdog-phi", "20", "--xdog-k", "2"]) == 2
    assert "--xdog-k, --xdog-phi apply to --method xdog, not canny" in capsys.readouterr().err
    assert main([*command, "--method", "xdog", "--canny-low", "5"]) == 2
    assert "--canny-low apply to --method canny, not xdog" in capsys.readouterr().err
    assert main([*command, "--split", "0.9,0.9,0.1"]) == 1
    assert "must sum to 1" in capsys.readouterr().err
    assert main([*command, "--method", "xdog", "--xdog-phi", "20", "--size", "32"]) == 0
    assert json.loads((tmp_path / "out" / "edges.json").read_text())["options"]["xdog_phi"] == 20


def test_the_help_states_the_defaults_of_edge_options():
    defaults = EdgeOptions()
    for settings in _EDGE_SETTINGS.values():
        for flag, field, text in settings:
            stated = float(re.findall(r"(-?[0-9.]+)\)$", text)[0])
            assert stated == getattr(defaults, field), flag


def test_training_reads_the_result_with_the_default_data_settings(tmp_path):
    from training.loop.trainer import Trainer

    photos = write_photos(tmp_path / "photos", 8, size=40)
    data = tmp_path / "edges"
    write_edges_dataset(photos, data, size=40, split=(0.5, 0.25, 0.25))
    config = tiny_config(data, tmp_path / "runs", **{"train.max_steps": "2"})
    assert (config.data.layout, config.data.input_kind) == ("folders", "photo")
    summary = Trainer(config, progress=False).train()
    assert summary["step"] == 2 and np.isfinite(summary["val_l1"])
    spec = json.loads((config.run_dir / "spec.json").read_text())
    assert (spec["input_kind"], spec["in_channels"], spec["out_channels"]) == ("photo", 3, 3)


def test_the_edges_preset_reads_what_the_tool_writes():
    preset = load_config(Path(__file__).parent.parent / "configs" / "edges.toml")
    assert preset.name == "edges" and preset.data.crop_size == 128
    assert (preset.data.layout, preset.data.input_kind, preset.data.direction) == (
        DataConfig.layout,
        "photo",
        "AtoB",
    )
