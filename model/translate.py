"""The Python API: a runtime and its spec turn images of any size into translated images."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import overload

import numpy as np
from PIL import Image, UnidentifiedImageError

from model.errors import InputError
from model.plan import TILE_OVERLAP, TILE_SIZE, plan_translation, run_plans
from model.processing import decode_output, encode_input, prepare_input
from model.spec import GeneratorSpec

# What one input may be; a list of them translates as a batch.
ImageInput = Image.Image | np.ndarray | str | os.PathLike

# Array inputs are what ``np.asarray`` gives for a PIL image of mode L, RGB or RGBA.
ARRAY_CHANNELS = (1, 3, 4)


def read_input(
    path: str | os.PathLike, spec: GeneratorSpec, palette_tolerance: int | None = None
) -> np.ndarray:
    """An image file -> the canonical input array (see ``prepare_input``).

    A missing file raises ``FileNotFoundError``; a file that is not an image, or not one this
    generator can use, raises ``InputError``; both messages begin with the file's path.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not an image (pix2pix translate reads folders)")
    try:
        with Image.open(path) as image:
            return prepare_input(image, spec, palette_tolerance)
    except (UnidentifiedImageError, OSError, InputError, Image.DecompressionBombError) as error:
        raise InputError(f"{path}: {error}") from error


def image_from_array(array: np.ndarray) -> Image.Image:
    """A uint8 (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array -> the PIL image it shows.

    (H, W) is gray, or class ids for a label-map generator; 3 channels are RGB (palette colors
    for a label-map generator); 4 are RGBA, composited onto white. Anything else is refused:
    guessing a float array's range would translate the wrong picture without a word.
    """
    if array.dtype != np.uint8:
        raise InputError(
            f"an array input must be uint8 (0..255, as np.asarray gives for a PIL image), "
            f"not {array.dtype}; for floats in 0..1 use (array * 255).round().astype(np.uint8)"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in ARRAY_CHANNELS)):
        batch = " (for several images, pass a list of arrays)" if array.ndim == 4 else ""
        raise InputError(
            f"an array input must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
            f"not {tuple(array.shape)}{batch}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise InputError(f"an array input must hold pixels, not shape {tuple(array.shape)}")
    return Image.fromarray(np.ascontiguousarray(array))


class Translator:
    """A runtime plus its spec: images in, translated images out, same size, by the one plan.

    ``runtime`` maps (N, C, H, W) float32 with sides divisible by the spec's multiple to
    (N, C_out, H, W) float32 (see ``model.runtime``); it sees at most ``batch_size`` crops at
    a time. ``tile_size`` 0 never tiles.

    Calling it translates a PIL image, a uint8 array (see ``image_from_array``), an image
    file's path, or a list of them; see ``__call__``.
    """

    def __init__(
        self,
        runtime: Callable[[np.ndarray], np.ndarray],
        spec: GeneratorSpec,
        tile_size: int = TILE_SIZE,
        tile_overlap: int = TILE_OVERLAP,
        batch_size: int = 8,
    ):
        if batch_size < 1 or tile_size < 0 or tile_overlap < 0:
            raise ValueError(
                f"batch_size must be at least 1 (got {batch_size}) and tile sizes cannot be "
                f"negative (got tile_size {tile_size}, tile_overlap {tile_overlap})"
            )
        self.runtime = runtime
        self.spec = spec
        self.tile_size = tile_size
        self.tile_overlap = tile_overlap
        self.batch_size = batch_size

    @classmethod
    def load(
        cls,
        path: str | Path,
        runtime: str = "auto",
        device: str = "auto",
        inference_mode: str | None = None,
        temperature: float | None = None,
        **options,
    ) -> Translator:
        from model.runtime import load_model

        loaded = load_model(
            path,
            runtime=runtime,
            device=device,
            inference_mode=inference_mode,
            temperature=temperature,
        )
        return cls(loaded.runtime, loaded.spec, **options)

    def translate_arrays(self, arrays: Sequence[np.ndarray], resize: str = "pad") -> list:
        """Canonical input arrays (see ``prepare_input``) -> uint8 RGB output arrays; crops of
        one shape run together, so equal-sized inputs share batches."""
        plans = [
            plan_translation(
                encode_input(array, self.spec), self.spec, resize, self.tile_size, self.tile_overlap
            )
            for array in arrays
        ]
        run_plans(plans, self.runtime, self.batch_size)
        return [
            decode_output(plan.result(), self.spec, array)
            for plan, array in zip(plans, arrays, strict=True)
        ]

    def translate(
        self, image: Image.Image, resize: str = "pad", palette_tolerance: int | None = None
    ) -> Image.Image:
        array = prepare_input(image, self.spec, palette_tolerance)
        return Image.fromarray(self.translate_arrays([array], resize)[0])

    def prepare(self, image: ImageInput, palette_tolerance: int | None = None) -> np.ndarray:
        """One input of any accepted kind -> the canonical array ``translate_arrays`` takes."""
        if isinstance(image, Image.Image):
            return prepare_input(image, self.spec, palette_tolerance)
        if isinstance(image, np.ndarray):
            return prepare_input(image_from_array(image), self.spec, palette_tolerance)
        if isinstance(image, str | os.PathLike):
            return read_input(image, self.spec, palette_tolerance)
        raise TypeError(
            f"cannot translate a {type(image).__name__}: give a PIL image, a uint8 numpy "
            "array, an image file's path, or a list of them"
        )

    @overload
    def __call__(
        self,
        images: Image.Image | str | os.PathLike,
        resize: str = ...,
        palette_tolerance: int | None = ...,
    ) -> Image.Image: ...
    @overload
    def __call__(
        self, images: np.ndarray, resize: str = ..., palette_tolerance: int | None = ...
    ) -> np.ndarray: ...
    @overload
    def __call__(
        self,
        images: list[ImageInput] | tuple[ImageInput, ...],
        resize: str = ...,
        palette_tolerance: int | None = ...,
    ) -> list[Image.Image | np.ndarray]: ...
    def __call__(self, images, resize: str = "pad", palette_tolerance: int | None = None):
        """Translate one input, or a list of them as batches; the output has the input's size.

        A PIL image or a path gives a PIL image (RGB); a uint8 array gives a uint8 (H, W, 3)
        RGB array; a list gives a list, item by item. ``resize`` ``pad`` runs at the input's
        size, ``fit`` at the training size (resized back after). ``palette_tolerance`` is how far
        a color-coded label map's colors may stray from the palette, per channel (0..255; None:
        the spec's, as the generator was trained).
        """
        if not isinstance(images, list | tuple):
            return self._translate_all([images], resize, palette_tolerance)[0]
        return self._translate_all(list(images), resize, palette_tolerance, numbered=True)

    def _translate_all(
        self, images: list, resize: str, palette_tolerance: int | None, numbered: bool = False
    ) -> list:
        outputs: list[Image.Image | np.ndarray] = []
        # A bounded number of decoded images at a time, so a long list of paths fits in memory.
        chunk = 4 * self.batch_size
        for start in range(0, len(images), chunk):
            group = images[start : start + chunk]
            arrays = []
            for index, image in enumerate(group, start):
                try:
                    arrays.append(self.prepare(image, palette_tolerance))
                except (InputError, TypeError) as error:
                    if not numbered or isinstance(image, str | os.PathLike):
                        raise  # alone, or named by its path already
                    raise type(error)(f"item {index}: {error}") from error
            translated = self.translate_arrays(arrays, resize)
            outputs += [
                output if isinstance(image, np.ndarray) else Image.fromarray(output)
                for image, output in zip(group, translated, strict=True)
            ]
        return outputs
