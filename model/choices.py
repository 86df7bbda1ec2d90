"""The choices that the command line, the service and the Python API share: image output formats
and resize modes, each defined once and spelled one way.

Export formats and runtimes are listed in ``model.export_formats`` and inference modes in
``model.spec``, beside the code that implements them. This module imports only the standard
library, so the command line reads it without slowing ``pix2pix --help``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ImageFormat:
    """An image format translations are written in."""

    name: str  # as the service, the command line and the API take it
    pil_format: str  # Pillow's name for its encoder
    media_type: str
    suffix: str  # the file-name ending ``pix2pix translate`` writes


IMAGE_FORMATS = (
    ImageFormat("png", "PNG", "image/png", ".png"),
    ImageFormat("jpeg", "JPEG", "image/jpeg", ".jpg"),
    ImageFormat("webp", "WEBP", "image/webp", ".webp"),
)
IMAGE_FORMAT_NAMES = tuple(entry.name for entry in IMAGE_FORMATS)
# Names people type for a format; the command line maps them to the one spelling.
IMAGE_FORMAT_ALIASES = {"jpg": "jpeg"}

# pad: keep the input's size (padded to the network's multiple, cropped back);
# fit: resize to the training size and back.
RESIZE_MODES = ("pad", "fit")


def image_format(name: str) -> ImageFormat:
    """The format called ``name`` (or one of its aliases); an unknown name is a ValueError
    that lists the known ones."""
    name = IMAGE_FORMAT_ALIASES.get(name, name)
    for entry in IMAGE_FORMATS:
        if entry.name == name:
            return entry
    raise ValueError(f"unknown image format {name!r} (choose {', '.join(IMAGE_FORMAT_NAMES)})")
