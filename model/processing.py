"""Pre- and post-processing: the one path from an image to the generator's tensors and back.

Training and serving both call these functions, so what is served is exactly what was trained:
``prepare_input`` turns a decoded image into the canonical array for the spec's input kind,
``encode_input``/``encode_target`` turn arrays into float32 (C, H, W) network inputs and targets,
``decode_output`` turns the network's output back into an RGB image. Everything here is NumPy,
so a serving install with ONNX Runtime needs no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from model.errors import InputError
from model.spec import GeneratorSpec, LabelClass

# What is read as an image wherever the project looks through a folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

# Lab scaling: L in [0, 100] and ab roughly in [-110, 110] map to [-1, 1].
L_SCALE = 50.0
AB_SCALE = 110.0

# sRGB (D65) <-> XYZ matrices.
_RGB_TO_XYZ = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ],
    dtype=np.float32,
)
_XYZ_TO_RGB = np.linalg.inv(_RGB_TO_XYZ).astype(np.float32)
_WHITE = np.array([0.950456, 1.0, 1.088754], dtype=np.float32)


# -- color ------------------------------------------------------------------------------------


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> float32 Lab (H, W, 3), L in [0, 100]."""
    linear = rgb.astype(np.float32) / 255.0
    linear = np.where(linear > 0.04045, ((linear + 0.055) / 1.055) ** 2.4, linear / 12.92)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE
    cube = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
    lightness = 116.0 * cube[..., 1] - 16.0
    a = 500.0 * (cube[..., 0] - cube[..., 1])
    b = 200.0 * (cube[..., 1] - cube[..., 2])
    return np.stack([lightness, a, b], axis=-1).astype(np.float32)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """float Lab (H, W, 3) -> uint8 RGB (H, W, 3), out-of-gamut colors clipped."""
    lab = lab.astype(np.float32)
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = fy + lab[..., 1] / 500.0
    fz = fy - lab[..., 2] / 200.0
    cube = np.stack([fx, fy, fz], axis=-1)
    xyz = np.where(cube > 0.206893, cube**3, (cube - 16.0 / 116.0) / 7.787) * _WHITE
    linear = np.clip(xyz @ _XYZ_TO_RGB.T, 0.0, 1.0)
    srgb = np.where(linear > 0.0031308, 1.055 * linear ** (1 / 2.4) - 0.055, 12.92 * linear)
    return np.clip(np.rint(srgb * 255.0), 0, 255).astype(np.uint8)


# -- decoded image -> canonical array ---------------------------------------------------------


def list_images(folder: Path) -> list[Path]:
    """The image files directly in ``folder`` (by suffix), sorted by name.

    Hidden files are skipped: ``._photo.png`` is macOS metadata, not an image.
    """
    return sorted(
        path
        for path in folder.iterdir()
        if path.is_file()
        and path.suffix.lower() in IMAGE_SUFFIXES
        and not path.name.startswith(".")
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: the one conversion that training, serving and ``data combine`` share.

    Transparent pixels are composited onto white. 16-bit images (``I;16``) are scaled from
    their full range; 32-bit integer images (``I``) count as 16-bit if any value exceeds 255
    and as 8-bit otherwise; float images (``F``) as 0..1. CMYK and palettes convert as Pillow
    converts them.
    """
    if image.mode.startswith("I;16"):
        # A fixed scale, not the image's peak: the frames of a 16-bit sequence stay comparable.
        image = _eight_bit(np.asarray(image), 65535.0)
    elif image.mode == "I":
        array = np.asarray(image)
        image = _eight_bit(array, 65535.0 if array.max(initial=0) > 255 else 255.0)
    elif image.mode == "F":
        image = _eight_bit(np.asarray(image), 1.0)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB")


def _eight_bit(values: np.ndarray, full_scale: float) -> Image.Image:
    scaled = values.astype(np.float64) / full_scale * 255.0 + 0.5
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))


def label_ids_from_image(
    image: Image.Image, spec: GeneratorSpec, palette_tolerance: int | None = None
) -> np.ndarray:
    """A label map image -> (H, W) uint8 class ids, checked against the spec's palette.

    Mode L or P images hold class ids as pixel values; RGB(A) images are color-coded and are
    mapped through the palette's colors (see ``ids_from_colors`` for ``palette_tolerance``).
    """
    if image.mode in ("L", "P"):
        ids = np.asarray(image, dtype=np.uint8)
        known = np.array(sorted(c.id for c in spec.palette), dtype=np.uint8)
        unknown = np.setdiff1d(np.unique(ids), known)
        if unknown.size:
            shown = ", ".join(str(v) for v in unknown[:10])
            raise InputError(
                f"label map holds class ids not in the palette: {shown} "
                f"(palette ids are {', '.join(str(v) for v in known)})"
            )
        return ids
    rgb = np.asarray(to_rgb(image), dtype=np.int16)
    return ids_from_colors(rgb, spec, palette_tolerance)


def resolve_palette_tolerance(spec: GeneratorSpec, palette_tolerance: int | None) -> int:
    """The tolerance to read label colors with: the caller's when given, else the spec's."""
    if palette_tolerance is None:
        return spec.palette_tolerance
    if isinstance(palette_tolerance, bool) or not isinstance(palette_tolerance, int | np.integer):
        raise InputError(f"palette_tolerance must be a whole number, got {palette_tolerance!r}")
    if not 0 <= palette_tolerance <= 255:
        raise InputError(f"palette_tolerance must be in 0..255, got {palette_tolerance}")
    return int(palette_tolerance)


def ids_from_colors(
    rgb: np.ndarray, spec: GeneratorSpec, palette_tolerance: int | None = None
) -> np.ndarray:
    """Color-coded label map (H, W, 3) -> class ids, each color read as its nearest palette
    color (largest difference of a channel) when within ``palette_tolerance`` of it.

    ``palette_tolerance`` None means the spec's, the tolerance the generator was trained with:
    JPEG-ed maps drift from the palette, and 255 takes the nearest color whatever it is. A
    color beyond the tolerance is refused, naming the most frequent such colors.
    """
    tolerance = resolve_palette_tolerance(spec, palette_tolerance)
    colors = np.array([c.color for c in spec.palette], dtype=np.int32)
    ids = np.array([c.id for c in spec.palette], dtype=np.uint8)
    # One int32 key per color: sorting and comparing keys is far faster than rows of three.
    keys = _color_keys(rgb.reshape(-1, 3))
    # Exact palette colors, nearly every pixel of a real map, by binary search in the palette;
    # a color listed twice means its first class, as argmin picks below.
    palette_keys, first = np.unique(_color_keys(colors), return_index=True)
    slot = np.minimum(np.searchsorted(palette_keys, keys), len(palette_keys) - 1)
    exact = palette_keys[slot] == keys
    result = ids[first][slot]
    if exact.all():
        return result.reshape(rgb.shape[:2])
    unique, inverse = np.unique(keys[~exact], return_inverse=True)
    unique_rgb = np.stack([unique >> 16, (unique >> 8) & 255, unique & 255], axis=1)
    distance = np.abs(unique_rgb[:, None, :] - colors[None, :, :]).max(axis=2)
    nearest = distance.argmin(axis=1)
    bad = distance[np.arange(len(unique)), nearest] > tolerance
    if bad.any():
        counts = np.bincount(inverse.reshape(-1), minlength=len(unique))
        raise InputError(_unknown_colors_message(unique_rgb[bad], counts[bad], tolerance))
    result[~exact] = ids[nearest][inverse.reshape(-1)]
    return result.reshape(rgb.shape[:2])


def _unknown_colors_message(colors: np.ndarray, counts: np.ndarray, tolerance: int) -> str:
    """Why a label map was refused: how many colors and pixels, the most frequent colors."""
    shown_count = 5
    order = np.argsort(-counts, kind="stable")[:shown_count]
    shown = ", ".join(
        f"({r}, {g}, {b}) in {int(count)} pixel(s)"
        for (r, g, b), count in zip(colors[order].tolist(), counts[order], strict=True)
    )
    more = f" and {len(colors) - shown_count} more" if len(colors) > shown_count else ""
    return (
        f"label map has {len(colors)} color(s) not in the palette in {int(counts.sum())} "
        f"pixel(s), more than {tolerance} (the palette tolerance, per channel) from every "
        f"palette color: {shown}{more}"
    )


def class_positions(palette: tuple[LabelClass, ...]) -> np.ndarray:
    """A 256-entry table from palette class id to channel position (ids need not be contiguous)."""
    lookup = np.zeros(256, dtype=np.int64)
    lookup[[label.id for label in palette]] = np.arange(len(palette))
    return lookup


def _color_keys(colors: np.ndarray) -> np.ndarray:
    """(N, 3) colors in 0..255 -> (N,) int32 0xRRGGBB, ordered as the rows are."""
    colors = colors.astype(np.int32)
    return (colors[:, 0] << 16) | (colors[:, 1] << 8) | colors[:, 2]


def prepare_input(
    image: Image.Image, spec: GeneratorSpec, palette_tolerance: int | None = None
) -> np.ndarray:
    """A decoded input image -> the canonical uint8 array for the spec's input kind.

    photo: (H, W, 3) RGB, or (H, W) gray for one-channel photo models; grayscale with rgb color
    space: (H, W) gray; grayscale with lab: (H, W, 3) RGB (L is taken in ``encode_input``);
    label_map: (H, W) class ids, colors read within ``palette_tolerance`` of the palette (None:
    the spec's; see ``ids_from_colors``).
    """
    image = ImageOps.exif_transpose(image)
    if spec.input_kind == "label_map":
        return label_ids_from_image(image, spec, palette_tolerance)
    rgb = to_rgb(image)
    if spec.in_channels == 1 and spec.color_space == "rgb":
        return np.asarray(rgb.convert("L"), dtype=np.uint8)
    return np.asarray(rgb, dtype=np.uint8)


def prepare_target(image: Image.Image, spec: GeneratorSpec) -> np.ndarray:
    """A decoded target image -> (H, W, 3) RGB or (H, W) gray uint8, per the spec's output."""
    rgb = to_rgb(ImageOps.exif_transpose(image))
    if spec.color_space == "rgb" and spec.out_channels == 1:
        return np.asarray(rgb.convert("L"), dtype=np.uint8)
    return np.asarray(rgb, dtype=np.uint8)


# -- canonical array <-> network arrays ---------------------------------------------------------


def _unit(array: np.ndarray) -> np.ndarray:
    """uint8 (H, W[, C]) -> float32 (C, H, W) in [-1, 1]."""
    values = array.astype(np.float32) / 127.5 - 1.0
    return values[None] if values.ndim == 2 else np.ascontiguousarray(values.transpose(2, 0, 1))


def encode_input(array: np.ndarray, spec: GeneratorSpec) -> np.ndarray:
    """Canonical input array -> network input (C, H, W) float32."""
    if spec.input_kind == "label_map":
        positions = class_positions(spec.palette)[array]
        if spec.one_hot:
            channels = np.arange(spec.num_classes, dtype=np.int64)[:, None, None]
            return (positions[None] == channels).astype(np.float32)
        scale = max(spec.num_classes - 1, 1)
        return (positions.astype(np.float32) / scale * 2.0 - 1.0)[None]
    if spec.color_space == "lab":
        lightness = rgb_to_lab(array)[..., 0]
        return (lightness / L_SCALE - 1.0)[None].astype(np.float32)
    return _unit(array)


def encode_target(array: np.ndarray, spec: GeneratorSpec) -> np.ndarray:
    """Canonical target array -> network target (C, H, W) float32 (ab for Lab models)."""
    if spec.color_space == "lab":
        ab = rgb_to_lab(array)[..., 1:] / AB_SCALE
        return np.ascontiguousarray(ab.transpose(2, 0, 1), dtype=np.float32)
    return _unit(array)


def decode_output(output, spec: GeneratorSpec, input_array: np.ndarray | None = None) -> np.ndarray:
    """Network output (C, H, W) array or tensor -> uint8 RGB (H, W, 3).

    Lab models recombine the predicted ab with the input's L.
    """
    if hasattr(output, "detach"):  # a torch tensor, without importing torch here
        output = output.detach().float().cpu().numpy()
    output = np.clip(np.asarray(output, dtype=np.float32), -1.0, 1.0)
    if spec.color_space == "lab":
        if input_array is None:
            raise ValueError("a lab generator's output needs the input image to recombine L")
        lightness = rgb_to_lab(input_array)[..., :1]
        ab = output.transpose(1, 2, 0) * AB_SCALE
        return lab_to_rgb(np.concatenate([lightness, ab], axis=-1))
    image = np.clip(np.rint((output + 1.0) * 127.5), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def input_preview(array: np.ndarray, spec: GeneratorSpec) -> np.ndarray:
    """What a person should see of an input: palette colors for label maps, gray as RGB."""
    if spec.input_kind == "label_map":
        colors = np.zeros((256, 3), dtype=np.uint8)
        colors[[label.id for label in spec.palette]] = [label.color for label in spec.palette]
        return colors[array]
    if spec.color_space == "lab":
        lightness = rgb_to_lab(array)[..., 0]
        gray = np.clip(lightness / 100.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if array.ndim == 2:
        return np.repeat(array[..., None], 3, axis=2)
    return array


# -- sizes ------------------------------------------------------------------------------------


def pad_to_multiple(batch: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad (N, C, H, W) on the bottom/right up to a multiple; returns original size.

    Reflection needs the pad to be smaller than the side, so small images are padded in
    several reflections; a 1-pixel side is replicated.
    """
    height, width = batch.shape[-2:]
    target_h = -(-height // multiple) * multiple
    target_w = -(-width // multiple) * multiple
    padded = batch
    while padded.shape[-2] < target_h or padded.shape[-1] < target_w:
        current_h, current_w = padded.shape[-2:]
        pad_h = max(min(target_h - current_h, current_h - 1), 0)
        pad_w = max(min(target_w - current_w, current_w - 1), 0)
        if pad_h == 0 and pad_w == 0:
            widths = ((0, 0), (0, 0), (0, target_h - current_h), (0, target_w - current_w))
            padded = np.pad(padded, widths, mode="edge")
            break
        padded = np.pad(padded, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="reflect")
    return padded, (height, width)


def resize_batch(batch: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize (N, C, H, W) float32 to ``size`` (H, W): bicubic, or nearest for label maps."""
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    resample = Image.NEAREST if nearest else Image.BICUBIC
    out = np.empty((*batch.shape[:2], *size), dtype=np.float32)
    for n in range(batch.shape[0]):
        for c in range(batch.shape[1]):
            channel = Image.fromarray(batch[n, c].astype(np.float32), mode="F")
            out[n, c] = np.asarray(channel.resize((size[1], size[0]), resample))
    return out
