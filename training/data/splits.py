"""Dealing files into train/val/test: a seeded shuffle of the sorted names, so the same files,
fractions and seed give the same split on any machine."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

SPLITS = ("train", "val", "test")


def shuffled(files: Sequence[Path], seed: int) -> list[Path]:
    """``files`` sorted by name, then shuffled by a generator seeded with ``seed``."""
    order = sorted(files)
    random.Random(seed).shuffle(order)
    return order


def held_out(total: int, fraction: float) -> int:
    """Files for one held-out split: ``fraction`` of ``total``, rounded, at least one if the
    fraction is above 0."""
    if fraction == 0:
        return 0
    return max(1, round(total * fraction))


def deal(ordered: Sequence[Path], val_fraction: float, test_fraction: float) -> dict[str, list]:
    """Consecutive runs of ``ordered``: the test share first, then val's, the rest for train."""
    test = held_out(len(ordered), test_fraction)
    val = held_out(len(ordered), val_fraction)
    return {
        "train": list(ordered[test + val :]),
        "val": list(ordered[test : test + val]),
        "test": list(ordered[:test]),
    }
