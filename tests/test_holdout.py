"""`pix2pix data holdout`: a folder of photos dealt into train/val/test, the same each time."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pix2pix.cli import main
from training.data.holdout import split_photos
from training.errors import DataError


def _photos(folder: Path, count: int) -> None:
    folder.mkdir(parents=True)
    for index in range(count):
        pixels = np.full((8, 12, 3), index, dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"photo{index:02d}.jpg")
    (folder / "notes.txt").write_text("not an image")


def _names(root: Path) -> dict[str, list[str]]:
    return {
        split: sorted(p.name for p in (root / split).iterdir())
        for split in ("train", "val", "test")
    }


def test_the_deal_is_deterministic_disjoint_and_complete(tmp_path: Path) -> None:
    _photos(tmp_path / "photos", 40)
    counts = split_photos(tmp_path / "photos", tmp_path / "first", 0.1, 0.05, seed=3)
    assert counts == {"test": 4, "val": 2, "train": 34}
    again = split_photos(tmp_path / "photos", tmp_path / "second", 0.1, 0.05, seed=3)
    assert again == counts
    first, second = _names(tmp_path / "first"), _names(tmp_path / "second")
    assert first == second
    every = first["train"] + first["val"] + first["test"]
    assert sorted(every) == sorted(f"photo{index:02d}.jpg" for index in range(40))
    other = split_photos(tmp_path / "photos", tmp_path / "third", 0.1, 0.05, seed=4)
    assert other == counts
    assert _names(tmp_path / "third")["test"] != first["test"]
    # Copied byte for byte: a JPEG stays the same JPEG.
    name = first["test"][0]
    assert (tmp_path / "first" / "test" / name).read_bytes() == (
        tmp_path / "photos" / name
    ).read_bytes()


def test_small_fractions_still_hold_out_one_photo_and_zero_holds_out_none(tmp_path: Path) -> None:
    _photos(tmp_path / "photos", 5)
    counts = split_photos(tmp_path / "photos", tmp_path / "out", 0.01, 0.0)
    assert counts == {"test": 1, "val": 0, "train": 4}
    assert _names(tmp_path / "out")["val"] == []


def test_the_command_deals_and_refuses_a_second_deal_into_the_same_root(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _photos(tmp_path / "photos", 20)
    out = tmp_path / "root"
    arguments = ["data", "holdout", str(tmp_path / "photos"), "--out", str(out)]
    assert main(arguments) == 0
    assert "'test': 2, 'val': 1, 'train': 17" in capsys.readouterr().out
    assert main(arguments) == 1
    assert "already exist" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("count", "test_fraction", "val_fraction", "message"),
    [
        (0, 0.1, 0.05, "holds no images"),
        (3, 1.5, 0.05, "--test-fraction must be at least 0 and below 1"),
        (3, 0.1, -0.1, "--val-fraction must be at least 0 and below 1"),
        (2, 0.5, 0.5, "leave none to train on"),
    ],
)
def test_bad_inputs_are_refused_by_name(
    tmp_path: Path, count: int, test_fraction: float, val_fraction: float, message: str
) -> None:
    _photos(tmp_path / "photos", count)
    with pytest.raises(DataError, match=message):
        split_photos(tmp_path / "photos", tmp_path / "out", test_fraction, val_fraction)


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing does not exist"):
        split_photos(tmp_path / "missing", tmp_path / "out")
