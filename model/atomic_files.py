"""Atomic file writes: a killed process leaves the old file or the new one, never half of one.

Every file the project writes for keeps (weights, specs, configs, pointers, dataset images,
reports) goes through :func:`write_atomic`: the content is written to a hidden temp file in the
destination's folder, flushed to disk, given the permissions a normal file would get, and
renamed over the destination.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, write: Callable[[Path], None], sync: bool = True) -> None:
    """Fill a hidden temp file beside ``path`` with ``write(temp_path)``, then rename it in.

    The temp file is named ``.<name>.<random>.tmp``, so a folder's leftovers from a killed run
    can be found (and removed) by the pattern ``.*.tmp``. ``sync = False`` skips the fsync
    (about 4 ms a file) for files that can be made again, such as the images of a dataset.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    os.close(descriptor)
    temp = Path(temp_name)
    try:
        write(temp)
        if sync:
            # The rename is atomic, but without fsync a crash of the machine could leave the
            # new name pointing at data that never reached the disk.
            with open(temp, "r+b") as handle:
                os.fsync(handle.fileno())
        make_readable(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 text to ``path`` atomically."""
    write_atomic(path, lambda temp: temp.write_text(text, encoding="utf-8"))


def make_readable(path: Path) -> None:
    """Give a temp file or folder the permissions a normal one would get (umask applies).

    mkstemp/mkdtemp create them private to the owner, which would keep, say, a non-root
    service in a container from reading a model folder.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def replace_folder(new: Path, target: Path) -> None:
    """Move folder ``new`` to ``target``; an old ``target`` is kept until ``new`` is in place."""
    if not target.exists():
        os.replace(new, target)
        return
    previous = target.with_name(f".{target.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    os.replace(target, previous)
    try:
        os.replace(new, target)
    except OSError:
        os.replace(previous, target)
        raise
    shutil.rmtree(previous, ignore_errors=True)
