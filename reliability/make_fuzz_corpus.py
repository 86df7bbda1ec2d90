"""Writes ``tests/fuzz_corpus``: the nastiest upload cases, replayed by ``tests/test_fuzz.py``.

Usage: python reliability/make_fuzz_corpus.py  (rewrites the folder; the files are small)

Each case is a body file and an entry in ``cases.json``: either a file part (``filename``,
``part_type``) or a whole request body with its ``content_type``, and the status and error
code the service must answer.
"""

from __future__ import annotations

import io
import json
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_fuzz import (  # noqa: E402
    bmp_declaring,
    gif_declaring,
    jpeg_declaring,
    png_chunk,
    png_declaring,
)

CORPUS = ROOT / "tests" / "fuzz_corpus"


def image_bytes(array: np.ndarray, pil_format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=pil_format, **options)
    return buffer.getvalue()


def small_photo() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)


def png_bomb() -> bytes:
    """A 1-bit PNG that declares 20000 x 20000 with all of its (compressible) rows present."""
    width = height = 20000
    row = b"\0" + b"\0" * (width // 8)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    data = zlib.compress(row * height, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + png_chunk(b"IEND", b"")
    )


def png_text_bomb() -> bytes:
    """A valid small PNG with a zTXt chunk that inflates to 64 MB."""
    base = image_bytes(small_photo(), "PNG")
    text = png_chunk(b"zTXt", b"comment\0\0" + zlib.compress(b"A" * (64 * 1024 * 1024), 9))
    return base[:33] + text + base[33:]


def multipart(parts: list[bytes], boundary: bytes = b"b", closing: bool = True) -> bytes:
    body = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return body + (b"--" + boundary + b"--\r\n" if closing else b"")


def file_part(data: bytes, name: str = "image", filename: str = "a.png") -> bytes:
    return (
        f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + data


def main() -> None:
    photo = image_bytes(small_photo(), "PNG")
    jpeg = image_bytes(small_photo(), "JPEG")
    sixteen = image_bytes(
        (np.random.default_rng(2).integers(0, 65535, (17, 23))).astype(np.uint16), "PNG"
    )
    multipart_type = "multipart/form-data; boundary=b"
    cases: dict[str, dict] = {}
    files: dict[str, bytes] = {}

    def part_case(name, data, status, code=None, **extra):
        files[f"{name}.bin"] = data
        cases[name] = {"body": f"{name}.bin", "status": status, **extra}
        if code:
            cases[name]["code"] = code

    def body_case(name, data, content_type, status, code=None, **extra):
        part_case(name, data, status, code, content_type=content_type, **extra)

    part_case("png_declares_4g_by_4g", png_declaring(2**32 - 1, 2**32 - 1), 413, "too_many_pixels")
    part_case("png_declares_65535_square", png_declaring(65535, 65535), 413, "too_many_pixels")
    part_case("png_declares_zero_width", png_declaring(0, 16), 415)
    part_case("png_16bit_rgba_huge", png_declaring(50000, 3, 16, 6), 413, "too_many_pixels")
    part_case("png_zlib_bomb_20000_square", png_bomb(), 413, "too_many_pixels")
    part_case("png_ztxt_bomb_64mb", png_text_bomb(), 422, "corrupt_image")
    part_case("gif_declares_65535_square", gif_declaring(65535, 65535), 413, "too_many_pixels")
    part_case("bmp_negative_height", bmp_declaring(40000, -40000), 413, "too_many_pixels")
    part_case("bmp_declares_2g_width", bmp_declaring(2**31 - 1, 1), 413, "too_many_pixels")
    part_case("jpeg_sof_65535_square", jpeg_declaring(65535, 65535), 413, "too_many_pixels")
    part_case("jpeg_truncated_half", jpeg[: len(jpeg) // 2], 422, "corrupt_image")
    part_case("png_truncated_in_idat", photo[: len(photo) - 40], 422, "corrupt_image")
    flipped = bytearray(photo)
    flipped[60] ^= 0xFF
    part_case("png_bad_crc_in_idat", bytes(flipped), 422, "corrupt_image")
    part_case("png_signature_only", b"\x89PNG\r\n\x1a\n", 415)
    part_case("svg_claiming_png", b"<svg xmlns='http://www.w3.org/2000/svg'/>", 415)
    part_case("empty_file", b"", 422, "empty_image")
    part_case("png_16bit_gray_valid", sixteen, 200)
    part_case(
        "png_traversal_filename",
        photo,
        200,
        filename="../../../../etc/passwd",
        part_type="text/plain",
    )
    part_case("one_pixel", image_bytes(np.zeros((1, 1, 3), np.uint8), "PNG"), 200)
    part_case(
        "one_by_700_row",
        image_bytes(np.zeros((1, 700, 3), np.uint8), "PNG"),
        200,
        params={"resize": "fit"},
    )
    part_case("label_map_as_jpeg", jpeg, 422, "invalid_input", model="labels")
    body_case(
        "multipart_without_closing_boundary",
        multipart([file_part(photo)], closing=False),
        multipart_type,
        422,
    )
    body_case(
        "multipart_lf_line_endings",
        multipart([file_part(photo)]).replace(b"\r\n", b"\n"),
        multipart_type,
        400,
    )
    body_case(
        "multipart_two_image_parts",
        multipart([file_part(b"not an image"), file_part(photo)]),
        multipart_type,
        200,
    )
    body_case(
        "multipart_no_boundary_param", multipart([file_part(photo)]), "multipart/form-data", 400
    )
    body_case(
        "multipart_wrong_field_name",
        multipart([file_part(photo, name="file")]),
        multipart_type,
        422,
        "invalid_request",
    )
    body_case(
        "multipart_part_header_64kb",
        multipart([b"X-Long: " + b"h" * 65536 + b"\r\n" + file_part(photo)]),
        multipart_type,
        400,
    )
    body_case(
        "multipart_base64_part",
        multipart(
            [
                b"Content-Transfer-Encoding: base64\r\n"
                + file_part(__import__("base64").b64encode(photo))
            ]
        ),
        multipart_type,
        415,
    )
    body_case("multipart_only_closing_boundary", b"--b--\r\n", multipart_type, 422)
    body_case("raw_png_as_octet_stream", photo, "application/octet-stream", 422)
    body_case("json_body", b'{"image": "x"}', "application/json", 422)
    CORPUS.mkdir(parents=True, exist_ok=True)
    for old in CORPUS.glob("*.bin"):
        old.unlink()
    for name, data in files.items():
        (CORPUS / name).write_bytes(data)
    (CORPUS / "cases.json").write_text(json.dumps(cases, indent=1, sort_keys=True) + "\n")
    total = sum(len(data) for data in files.values())
    print(f"wrote {len(cases)} cases ({total / 1024:.0f} KB) to {CORPUS}")


if __name__ == "__main__":
    main()
