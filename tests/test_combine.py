"""Tests for building aligned A|B images from two folders of pairs."""

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageOps

from app.imaging import decode_upload
from model.processing import prepare_input
from tests.conftest import tiny_config
from training.data.combine import combine_folders, split_aligned
from training.data.datasets import PairedDataset, make_spec
from training.data.download import check_aligned_layout
from training.errors import DataError


def _pixels(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _save(path: Path, width: int = 16, height: int = 16, seed: int = 0) -> np.ndarray:
    """Write a random RGB image; returns the pixels as they read back (JPEG is lossy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(width, height, seed)).save(path)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _halves(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with Image.open(path) as image:
        assert image.mode == "RGB"
        pixels = np.asarray(image)
    width = pixels.shape[1] // 2
    return pixels[:, :width], pixels[:, width:]


def test_flat_folders_pair_by_stem_with_a_left_and_b_right(tmp_path: Path) -> None:
    a_dir, b_dir, out = tmp_path / "A", tmp_path / "B", tmp_path / "out"
    expected = {
        "0001": (_save(a_dir / "0001.png", seed=1), _save(b_dir / "0001.jpg", seed=2)),
        "0002": (_save(a_dir / "0002.png", seed=3), _save(b_dir / "0002.PNG", seed=4)),
    }

    summary = combine_folders(a_dir, b_dir, out)

    assert summary == {"out": str(out), "pairs": 2, "splits": {}}
    assert sorted(path.name for path in out.iterdir()) == ["0001.png", "0002.png"]
    for stem, (a_pixels, b_pixels) in expected.items():
        left, right = _halves(out / f"{stem}.png")
        np.testing.assert_array_equal(left, a_pixels)
        np.testing.assert_array_equal(right, b_pixels)


def test_split_folders_are_mirrored(tmp_path: Path) -> None:
    a_dir, b_dir, out = tmp_path / "A", tmp_path / "B", tmp_path / "out"
    for index, (split, stem) in enumerate([("train", "x"), ("train", "y"), ("val", "z")]):
        _save(a_dir / split / f"{stem}.png", seed=2 * index)
        _save(b_dir / split / f"{stem}.png", seed=2 * index + 1)

    summary = combine_folders(a_dir, b_dir, out, progress=True)

    assert summary["splits"] == {"train": 2, "val": 1}
    assert summary["pairs"] == 3
    assert check_aligned_layout(out) == {"train": 2, "val": 1}
    left, right = _halves(out / "val" / "z.png")
    np.testing.assert_array_equal(left, _pixels(16, 16, 4))
    np.testing.assert_array_equal(right, _pixels(16, 16, 5))


def test_grayscale_palette_and_sixteen_bit_inputs_become_rgb(tmp_path: Path) -> None:
    a_dir, b_dir, out = tmp_path / "A", tmp_path / "B", tmp_path / "out"
    a_dir.mkdir()
    b_dir.mkdir()
    gray = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    Image.fromarray(gray).save(a_dir / "gray.png")
    Image.fromarray(gray).convert("P").save(b_dir / "gray.png")
    deep = np.full((12, 16), 0x1234, dtype=np.uint16)
    Image.fromarray(deep).save(a_dir / "deep.png")
    Image.fromarray(gray).save(b_dir / "deep.png")

    combine_folders(a_dir, b_dir, out)

    left, right = _halves(out / "gray.png")
    np.testing.assert_array_equal(left, np.stack([gray] * 3, axis=-1))
    np.testing.assert_array_equal(right, np.stack([gray] * 3, axis=-1))
    left, _ = _halves(out / "deep.png")
    assert (left == 0x12).all()


def test_exif_rotation_is_applied_before_pairing(tmp_path: Path) -> None:
    a_dir, b_dir, out = tmp_path / "A", tmp_path / "B", tmp_path / "out"
    a_dir.mkdir()
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    # Stored 16 wide and 8 tall; a viewer shows it 8 wide and 16 tall, like its partner.
    Image.fromarray(_pixels(16, 8, seed=7)).save(a_dir / "photo.jpg", exif=exif)
    b_pixels = _save(b_dir / "photo.png", width=8, height=16)

    combine_folders(a_dir, b_dir, out)

    with Image.open(a_dir / "photo.jpg") as image:
        upright = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    left, right = _halves(out / "photo.png")
    np.testing.assert_array_equal(left, upright)
    np.testing.assert_array_equal(right, b_pixels)


def test_missing_partners_are_all_listed_both_ways(tmp_path: Path) -> None:
    a_dir, b_dir, out = tmp_path / "A", tmp_path / "B", tmp_path / "out"
    for stem in ["paired_1", "paired_2", "only_a_1", "only_a_2"]:
        _save(a_dir / f"{stem}.png")
    for stem in ["paired_1", "paired_2", "only_b_1", "only_b_2"]:
        _save(b_dir / f"{stem}.jpg")

    with pytest.raises(DataError) as caught:
        combine_folders(a_dir, b_dir, out)

    message = str(caught.value)
    for name in ["only_a_1.png", "only_a_2.png", "only_b_1.jpg", "only_b_2.jpg"]:
        assert name in message
    assert "paired" not in message
    assert not out.exists()


def test_split_on_one_side_only_counts_as_missing(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    _save(a_dir / "train" / "1.png")
    _save(a_dir / "val" / "2.png")
    _save(b_dir / "train" / "1.png")

    with pytest.raises(DataError, match=r"val/2\.png"):
        combine_folders(a_dir, b_dir, tmp_path / "out")


def test_split_folders_in_only_one_input_are_rejected(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    _save(a_dir / "train" / "1.png")
    _save(b_dir / "1.png")

    with pytest.raises(DataError, match="split folders"):
        combine_folders(a_dir, b_dir, tmp_path / "out")


def test_size_mismatch_names_both_files_and_sizes(tmp_path: Path) -> None:
    a_dir, b_dir, out = tmp_path / "A", tmp_path / "B", tmp_path / "out"
    _save(a_dir / "ok.png")
    _save(b_dir / "ok.png")
    _save(a_dir / "pair.png", width=16, height=12)
    _save(b_dir / "pair.jpg", width=20, height=12)

    with pytest.raises(DataError) as caught:
        combine_folders(a_dir, b_dir, out)

    message = str(caught.value)
    assert str(a_dir / "pair.png") in message
    assert str(b_dir / "pair.jpg") in message
    assert "16x12" in message
    assert "20x12" in message
    assert not out.exists()


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    _save(a_dir / "1.png")
    _save(b_dir / "1.png")
    (b_dir / "1.png").write_bytes(b"this is not a png")

    with pytest.raises(DataError, match=r"unreadable image .*1\.png"):
        combine_folders(a_dir, b_dir, tmp_path / "out")


def test_truncated_image_is_named(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    _save(a_dir / "1.png", width=64, height=64)
    _save(b_dir / "1.png", width=64, height=64)
    data = (b_dir / "1.png").read_bytes()
    # The header still reads, so only decoding the pixels finds the damage.
    (b_dir / "1.png").write_bytes(data[: len(data) // 2])

    with pytest.raises(DataError) as caught:
        combine_folders(a_dir, b_dir, tmp_path / "out")

    assert str(b_dir / "1.png") in str(caught.value)
    assert not (tmp_path / "out" / "1.png").exists()


def test_duplicate_stems_are_named(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    _save(a_dir / "1.png")
    _save(a_dir / "1.jpg")
    _save(b_dir / "1.png")

    with pytest.raises(DataError) as caught:
        combine_folders(a_dir, b_dir, tmp_path / "out")

    message = str(caught.value)
    assert "1.png" in message
    assert "1.jpg" in message
    assert "same stem" in message


def test_empty_input_is_rejected(tmp_path: Path) -> None:
    a_dir, b_dir = tmp_path / "A", tmp_path / "B"
    a_dir.mkdir()
    _save(b_dir / "1.png")
    (a_dir / "notes.txt").write_text("not an image")

    with pytest.raises(DataError, match="no images"):
        combine_folders(a_dir, b_dir, tmp_path / "out")


def test_missing_folder_is_rejected(tmp_path: Path) -> None:
    _save(tmp_path / "B" / "1.png")

    with pytest.raises(DataError, match="does not exist"):
        combine_folders(tmp_path / "A", tmp_path / "B", tmp_path / "out")


def _write_rgb16_png(path: Path, pixels: np.ndarray) -> None:
    """A 16-bit-per-channel RGB PNG, which Pillow can read but not write."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    height, width, _ = pixels.shape
    rows = b"".join(b"\0" + row.astype(">u2").tobytes() for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _write_unusual(path_stem: Path, mode: str) -> tuple[Path, tuple[int, int], tuple[int, ...]]:
    """One 16x16 image of ``mode``; returns its path and one pixel with the RGB it must become."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    if mode == "RGBA":
        alpha = rng.choice(np.array([0, 128, 255], dtype=np.uint8), (16, 16))
        alpha[0, 0] = 0
        path = path_stem.with_suffix(".png")
        Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
        return path, (0, 0), (255, 255, 255)  # transparent means white
    if mode == "I;16":
        deep = rng.integers(0, 65536, (16, 16), dtype=np.uint16)
        deep[0, 0] = 0xFFFF
        path = path_stem.with_suffix(".png")
        Image.fromarray(deep).save(path)
        return path, (0, 0), (255, 255, 255)
    if mode == "I;16 dark":
        # All values below 256 of 65535: nearly black, not an 8-bit image in disguise.
        deep = rng.integers(0, 256, (16, 16), dtype=np.uint16)
        deep[0, 0] = 255
        path = path_stem.with_suffix(".png")
        Image.fromarray(deep).save(path)
        return path, (0, 0), (1, 1, 1)
    if mode == "RGB;16":
        deep = rng.integers(0, 65536, (16, 16, 3), dtype=np.uint16)
        deep[0, 0] = (0xFFFF, 0x8000, 0x00FF)
        path = path_stem.with_suffix(".png")
        _write_rgb16_png(path, deep)
        return path, (0, 0), (255, 128, 0)
    if mode == "P":
        indices = rng.integers(0, 4, (16, 16), dtype=np.uint8)
        indices[0, 0] = 3
        image = Image.fromarray(indices, "P")
        image.putpalette([200, 10, 10, 10, 200, 10, 10, 10, 200, 30, 40, 50])
        path = path_stem.with_suffix(".png")
        image.save(path, transparency=3)
        return path, (0, 0), (255, 255, 255)  # the transparent index is white, not its color
    assert mode == "CMYK"
    path = path_stem.with_suffix(".tif")
    Image.fromarray(rgb).convert("CMYK").save(path)
    rgb_first = tuple(
        int(v) for v in Image.fromarray(rgb).convert("CMYK").convert("RGB").getpixel((0, 0))
    )
    return path, (0, 0), rgb_first


@pytest.mark.parametrize("mode", ["RGBA", "I;16", "I;16 dark", "RGB;16", "P", "CMYK"])
def test_combine_training_and_serving_read_the_same_pixels(tmp_path: Path, mode: str) -> None:
    """`data combine`, the dataset and the service's upload path convert a file alike."""
    root = tmp_path / "data"
    a_dir, b_dir = root / "train" / "A", root / "train" / "B"
    a_dir.mkdir(parents=True)
    path, (x, y), expected = _write_unusual(a_dir / "unusual", mode)
    _save(b_dir / "unusual.png")

    combine_folders(root / "train" / "A", root / "train" / "B", tmp_path / "combined")
    combined, _ = _halves(tmp_path / "combined" / "unusual.png")

    config = tiny_config(root, tmp_path / "runs")
    spec = make_spec(config)
    trained, _ = PairedDataset(config.data, "train", spec, train=False).load_arrays(0)

    uploaded = decode_upload(path.read_bytes(), max_side=1024, max_pixels=1 << 20)
    served = prepare_input(uploaded, spec)

    np.testing.assert_array_equal(trained, combined)
    np.testing.assert_array_equal(served, combined)
    assert tuple(combined[y, x]) == expected


def test_split_undoes_combine_and_writes_one_side_for_colorization(tmp_path: Path) -> None:
    a_dir, b_dir, aligned = tmp_path / "A", tmp_path / "B", tmp_path / "aligned"
    for index, (split, stem) in enumerate([("train", "x"), ("train", "y"), ("test", "z")]):
        _save(a_dir / split / f"{stem}.png", seed=2 * index)
        _save(b_dir / split / f"{stem}.png", seed=2 * index + 1)
    combine_folders(a_dir, b_dir, aligned)

    both = split_aligned(aligned, tmp_path / "both")
    assert both == {"out": str(tmp_path / "both"), "images": 3, "splits": {"train": 2, "test": 1}}
    for split, stem in [("train", "x"), ("train", "y"), ("test", "z")]:
        for side, folder in (("A", a_dir), ("B", b_dir)):
            written = tmp_path / "both" / split / side / f"{stem}.png"
            with Image.open(written) as image, Image.open(folder / split / f"{stem}.png") as source:
                np.testing.assert_array_equal(np.asarray(image), np.asarray(source))

    photos = tmp_path / "photos"
    assert split_aligned(aligned, photos, side="A")["images"] == 3
    assert sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.png")) == [
        "test/z.png",
        "train/x.png",
        "train/y.png",
    ]
    with Image.open(photos / "test" / "z.png") as written:
        np.testing.assert_array_equal(np.asarray(written), _pixels(16, 16, 4))


def test_split_names_every_image_that_is_not_a_pair(tmp_path: Path) -> None:
    _save(tmp_path / "data" / "ok.png", width=32)
    _save(tmp_path / "data" / "odd.png", width=31)
    (tmp_path / "data" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataError) as error:
        split_aligned(tmp_path / "data", tmp_path / "out")
    message = str(error.value)
    assert "2 problem(s)" in message and "odd.png: width 31 is odd" in message
    assert "broken.png" in message
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="side must be A, B or both"):
        split_aligned(tmp_path / "data", tmp_path / "out", side="left")
    with pytest.raises(DataError, match="does not exist"):
        split_aligned(tmp_path / "missing", tmp_path / "out")
