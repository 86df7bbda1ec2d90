"""Safe decoding of uploaded images and encoding of results."""

from __future__ import annotations

import io
import warnings

from PIL import Image, UnidentifiedImageError

from app.errors import ApiError
from model.choices import image_format


def decode_upload(data: bytes, max_side: int, max_pixels: int) -> Image.Image:
    """Bytes -> a fully decoded image, refusing non-images, corrupt files and pixel bombs.

    The header is checked against the limits before any pixel is decoded.
    """
    return load_upload(open_upload(data, max_side, max_pixels))


def open_upload(data: bytes, max_side: int, max_pixels: int) -> Image.Image:
    """Bytes -> an image whose header is read and checked against the limits (no pixels yet)."""
    if not data:
        raise ApiError(422, "empty_image", "the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ApiError(
            415, "unsupported_media_type", "the upload is not an image in a format we can read"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ApiError(413, "too_many_pixels", f"image has too many pixels: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ApiError(422, "corrupt_image", f"the image cannot be decoded: {error}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ApiError(422, "corrupt_image", f"the image has an invalid size {width}x{height}")
    if max(width, height) > max_side or width * height > max_pixels:
        raise ApiError(
            413,
            "too_many_pixels",
            f"image is {width}x{height}; the limit is {max_side} px per side and "
            f"{max_pixels} pixels",
        )
    return image


def load_upload(image: Image.Image) -> Image.Image:
    """Decode the pixels of an image from ``open_upload``; a truncated file is a clear error."""
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ApiError(
            422, "corrupt_image", f"the image is truncated or corrupt: {error}"
        ) from None
    return image


def encode_image(image: Image.Image, format_name: str) -> tuple[bytes, str]:
    """An image as bytes of one of ``model.choices.IMAGE_FORMATS``, with its media type."""
    encoding = image_format(format_name)
    buffer = io.BytesIO()
    lossy = encoding.pil_format in ("JPEG", "WEBP")
    options = {"quality": 92} if lossy else {"compress_level": 1}
    image.save(buffer, format=encoding.pil_format, **options)
    return buffer.getvalue(), encoding.media_type
