"""Deal a folder of photos into train/val/test folders, the colorization layout's data root.

The deal is a seeded shuffle of the sorted file names, so the same folder, fractions and seed
always give the same split on any machine. Files are copied byte for byte (the photos keep
their format); the source folder is only read.
"""

import shutil
from pathlib import Path

from model.processing import list_images
from training.data.splits import deal, shuffled
from training.errors import DataError


def split_photos(
    source: str | Path,
    out: str | Path,
    test_fraction: float = 0.1,
    val_fraction: float = 0.05,
    seed: int = 0,
) -> dict[str, int]:
    """Copy the images of ``source`` into out/train, out/val and out/test; returns the counts.

    ``test_fraction`` and ``val_fraction`` of the photos (rounded, at least one each when the
    fraction is above 0) go to test and val, the rest to train. Raises DataError for a missing
    or empty source, fractions that leave no training photo, or an out folder that already
    holds split folders (a second deal would mix two splits).
    """
    source, out = Path(source), Path(out)
    if not source.is_dir():
        raise DataError(f"photo folder {source} does not exist or is not a folder")
    for name, fraction in (("test", test_fraction), ("val", val_fraction)):
        if not 0 <= fraction < 1:
            raise DataError(f"--{name}-fraction must be at least 0 and below 1; got {fraction}")
    photos = list_images(source)
    if not photos:
        raise DataError(f"{source} holds no images (looked for PNG, JPEG and the like)")
    dealt = deal(shuffled(photos, seed), val_fraction, test_fraction)
    counts = {split: len(dealt[split]) for split in ("test", "val", "train")}
    if counts["train"] < 1:
        raise DataError(
            f"{len(photos)} photo(s) with --test-fraction {test_fraction} and --val-fraction "
            f"{val_fraction} leave none to train on: lower the fractions or add photos"
        )
    taken = [out / split for split in ("train", "val", "test") if (out / split).exists()]
    if taken:
        raise DataError(
            f"{', '.join(str(path) for path in taken)} already exist(s): choose an empty --out "
            "or remove it, so that two splits do not mix"
        )
    for split, files in dealt.items():
        folder = out / split
        folder.mkdir(parents=True)
        for path in files:
            shutil.copyfile(path, folder / path.name)
    return counts
