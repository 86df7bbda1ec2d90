"""Procedural painted landscapes: label maps with matching photos, the built-in dataset.

Each scene is painted back to front: sky, clouds, mountain ridges, a distant forest edge,
grass, water and its shore, a road, then trees, rocks and houses sorted far to near. Every
layer writes its class id into the label map and its shaded color into the photo through
the same mask, so the two agree pixel for pixel. Texture comes from value noise (small
random grids resized with a cubic kernel); the photo is kept channel-first while painting
so per-channel colors broadcast along whole rows. Rendering and writing a 256 px pair takes
about 13 ms on one core (see bench/synth.py).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from model.atomic_files import write_atomic, write_text_atomic
from model.spec import LabelClass
from training.errors import DataError

logger = logging.getLogger(__name__)

SKY, CLOUD, MOUNTAIN, SNOW, WATER, GRASS, TREE, ROCK, BUILDING, ROAD, SAND = range(11)

LANDSCAPE_PALETTE: tuple[LabelClass, ...] = (
    LabelClass(SKY, "sky", (90, 170, 240)),
    LabelClass(CLOUD, "cloud", (190, 190, 255)),
    LabelClass(MOUNTAIN, "mountain", (130, 90, 60)),
    LabelClass(SNOW, "snow", (250, 250, 250)),
    LabelClass(WATER, "water", (30, 70, 200)),
    LabelClass(GRASS, "grass", (120, 200, 60)),
    LabelClass(TREE, "tree", (20, 110, 40)),
    LabelClass(ROCK, "rock", (140, 140, 140)),
    LabelClass(BUILDING, "building", (220, 60, 60)),
    LabelClass(ROAD, "road", (128, 64, 128)),
    LabelClass(SAND, "sand", (235, 205, 130)),
)

TASKS = ("labels", "color")
SPLIT_NAMES = ("train", "val", "test")
MINIMUM_SIZE = 32
# Fast zlib level with run-length matching: quicker and smaller than the default strategy
# on these images, and writing would otherwise cost as much as painting.
PNG_OPTIONS: dict[str, Any] = {"compress_level": 1, "compress_type": zlib.Z_RLE}

# Standard deviation of cubically resampled uniform noise; used to give noise unit spread.
_RESAMPLED_UNIFORM_STD = 0.238
# OpenBLAS runs matrix products below about 262k multiply-adds on the calling thread; bigger
# resizes go through Pillow so that painting never wakes a pool of spinning BLAS threads.
_SINGLE_THREAD_PRODUCT = 200_000


def _rgb(red: float, green: float, blue: float) -> np.ndarray:
    """A color shaped (3, 1, 1) to broadcast over a channel-first image."""
    return np.asarray((red, green, blue), np.float32).reshape(3, 1, 1)


# -- noise ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _cubic_resampler(source: int, target: int) -> np.ndarray:
    """A (target, source) matrix that resamples a sequence with Catmull-Rom cubic weights."""
    matrix = np.zeros((target, source), np.float32)
    centers = (np.arange(target) + 0.5) * (source / target) - 0.5
    starts = np.floor(centers).astype(np.int64)
    t = centers - starts
    weights = (
        -0.5 * t**3 + t**2 - 0.5 * t,
        1.5 * t**3 - 2.5 * t**2 + 1.0,
        -1.5 * t**3 + 2.0 * t**2 + 0.5 * t,
        0.5 * t**3 - 0.5 * t**2,
    )
    for offset, weight in enumerate(weights):
        columns = np.clip(starts + offset - 1, 0, source - 1)
        np.add.at(matrix, (np.arange(target), columns), weight.astype(np.float32))
    matrix.flags.writeable = False
    return matrix


def _resample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Smoothly resize a float grid to (height, width)."""
    grid_height, grid_width = grid.shape
    if (grid_height, grid_width) == (height, width):
        return grid
    if height * width * max(grid_height, grid_width) < _SINGLE_THREAD_PRODUCT:
        return _cubic_resampler(grid_height, height) @ grid @ _cubic_resampler(grid_width, width).T
    image = Image.fromarray(np.ascontiguousarray(grid, dtype=np.float32))
    # A copy: arrays viewing Pillow's bytes are read-only, and callers update noise in place.
    return np.array(image.resize((width, height), Image.Resampling.BICUBIC))


def _noise(
    rng: np.random.Generator,
    height: int,
    width: int,
    cells_y: int,
    cells_x: int,
    octaves: int = 3,
    persistence: float = 0.5,
) -> np.ndarray:
    """Fractal value noise of shape (height, width), zero mean and roughly unit spread.

    The octaves are summed on the finest grid and resized to full size once: one large
    resize per field instead of one per octave keeps a scene within its time budget.
    """
    fine_y = min(max(cells_y << (octaves - 1), 1), height)
    fine_x = min(max(cells_x << (octaves - 1), 1), width)
    total = np.zeros((fine_y, fine_x), np.float32)
    amplitude = 1.0
    weights = 0.0
    for octave in range(octaves):
        grid_y = min(max(cells_y << octave, 1), fine_y)
        grid_x = min(max(cells_x << octave, 1), fine_x)
        grid = rng.random((grid_y, grid_x), dtype=np.float32) - 0.5
        total += amplitude * _resample(grid, fine_y, fine_x)
        weights += amplitude * amplitude
        amplitude *= persistence
    total *= 1.0 / (_RESAMPLED_UNIFORM_STD * math.sqrt(weights))
    return _resample(total, height, width)


def _line_noise(
    rng: np.random.Generator, length: int, cells: int, octaves: int = 5, persistence: float = 0.5
) -> np.ndarray:
    """Fractal 1-D value noise of the given length, zero mean and roughly unit spread."""
    return _noise(rng, 1, length, 1, cells, octaves, persistence)[0]


def _tiling_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise that wraps around in both directions, for texture lookups with modulo."""
    grid = rng.random((cells, cells), dtype=np.float32) - 0.5
    cell = size // cells
    # The cubic kernel reads two cells either side; wrap-around padding makes the crop periodic.
    padded = np.pad(grid, 2, mode="wrap")
    field = _resample(padded, (cells + 4) * cell, (cells + 4) * cell)
    start = 2 * cell
    return field[start : start + size, start : start + size] * (1.0 / _RESAMPLED_UNIFORM_STD)


# -- lighting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lighting:
    """The time of day: sky colors and how sunlit and shadowed surfaces are tinted.

    Colors are (3, 1, 1) arrays in 0..255; ``sun`` and ``ambient`` multiply an albedo.
    """

    name: str
    zenith: np.ndarray
    horizon: np.ndarray
    sun: np.ndarray
    ambient: np.ndarray
    cloud_lit: np.ndarray
    cloud_shade: np.ndarray
    cloud_cover: float
    glow: float
    side: float
    sun_x: float
    sun_height: float
    windows_lit: bool

    def shade(self, albedo: np.ndarray, lit: np.ndarray) -> np.ndarray:
        """Color (3, h, w) of a surface; ``lit`` (h, w) is 0 in shadow and 1 facing the sun."""
        color = np.asarray(lit, np.float32)[None] * (self.sun - self.ambient)
        color += self.ambient
        color *= albedo
        return color

    def haze(self, color: np.ndarray, amount: np.ndarray | float) -> np.ndarray:
        """Blend ``color`` in place toward the horizon sky: far things fade into the air."""
        amount = np.asarray(amount, np.float32)[None]
        color *= 1.0 - amount
        color += amount * self.horizon
        return color


@dataclass(frozen=True)
class _TimeOfDay:
    """A preset the lighting is drawn from, with a little jitter per scene."""

    zenith: tuple[float, float, float]
    horizon: tuple[float, float, float]
    sun: tuple[float, float, float]
    ambient: tuple[float, float, float]
    cloud_lit: tuple[float, float, float]
    cloud_shade: tuple[float, float, float]
    cover: tuple[float, float]
    glow: float
    sun_height: tuple[float, float]
    share: float


_TIMES_OF_DAY = {
    "day": _TimeOfDay(
        zenith=(55, 115, 205),
        horizon=(180, 212, 236),
        sun=(1.12, 1.08, 1.0),
        ambient=(0.52, 0.58, 0.72),
        cloud_lit=(252, 252, 250),
        cloud_shade=(160, 172, 196),
        cover=(0.15, 0.5),
        glow=0.25,
        sun_height=(0.05, 0.2),
        share=0.45,
    ),
    "golden": _TimeOfDay(
        zenith=(75, 105, 175),
        horizon=(250, 196, 128),
        sun=(1.22, 0.98, 0.7),
        ambient=(0.48, 0.46, 0.62),
        cloud_lit=(255, 214, 165),
        cloud_shade=(150, 130, 150),
        cover=(0.15, 0.45),
        glow=0.6,
        sun_height=(0.35, 0.7),
        share=0.22,
    ),
    "sunset": _TimeOfDay(
        zenith=(45, 52, 112),
        horizon=(248, 128, 72),
        sun=(1.25, 0.78, 0.52),
        ambient=(0.38, 0.34, 0.55),
        cloud_lit=(255, 165, 110),
        cloud_shade=(105, 80, 118),
        cover=(0.2, 0.5),
        glow=0.85,
        sun_height=(0.6, 0.9),
        share=0.15,
    ),
    "overcast": _TimeOfDay(
        zenith=(125, 134, 150),
        horizon=(196, 199, 202),
        sun=(0.9, 0.92, 0.95),
        ambient=(0.66, 0.68, 0.74),
        cloud_lit=(222, 223, 228),
        cloud_shade=(138, 142, 154),
        cover=(0.6, 0.85),
        glow=0.0,
        sun_height=(0.2, 0.4),
        share=0.18,
    ),
}


def _pick_lighting(rng: np.random.Generator) -> _Lighting:
    names = list(_TIMES_OF_DAY)
    name = str(rng.choice(names, p=[_TIMES_OF_DAY[name].share for name in names]))
    preset = _TIMES_OF_DAY[name]

    def jittered(color: tuple[float, float, float], jitter: float) -> np.ndarray:
        return _rgb(*(np.asarray(color) + rng.uniform(-jitter, jitter, 3)))

    side = float(rng.choice([-1.0, 1.0]))
    return _Lighting(
        name=name,
        zenith=jittered(preset.zenith, 10),
        horizon=jittered(preset.horizon, 10),
        sun=jittered(preset.sun, 0.04),
        ambient=jittered(preset.ambient, 0.04),
        cloud_lit=jittered(preset.cloud_lit, 6),
        cloud_shade=jittered(preset.cloud_shade, 8),
        cloud_cover=float(rng.uniform(*preset.cover)),
        glow=preset.glow,
        side=side,
        sun_x=0.5 + side * float(rng.uniform(0.1, 0.4)),
        # Fraction of the way from the top of the image down to the horizon.
        sun_height=float(rng.uniform(*preset.sun_height)),
        windows_lit=name == "sunset" or (name == "golden" and rng.random() < 0.5),
    )


# -- the scene being painted ---------------------------------------------------------------


@dataclass
class _Scene:
    """The canvas: label map (size, size), channel-first photo (3, size, size), and helpers."""

    rng: np.random.Generator
    size: int
    horizon: int
    light: _Lighting
    labels: np.ndarray
    photo: np.ndarray
    rows: np.ndarray
    columns: np.ndarray
    leaves: np.ndarray
    water_shore: np.ndarray | None = None

    def paint(
        self, top: int, left: int, mask: np.ndarray | None, label: int, color: np.ndarray
    ) -> None:
        """Write ``label`` and ``color`` where ``mask`` holds, in the window at (top, left).

        With no mask the whole window, as large as ``color``, is painted.
        """
        height, width = mask.shape if mask is not None else color.shape[1:]
        rows, columns = slice(top, top + height), slice(left, left + width)
        if mask is None:
            self.labels[rows, columns] = label
            self.photo[:, rows, columns] = color
            return
        self.labels[rows, columns][mask] = label
        np.copyto(self.photo[:, rows, columns], color, where=mask)

    def nearness(self, row: float) -> float:
        """0 at the horizon, 1 at the bottom edge: how close to the viewer a ground row is."""
        return (row - self.horizon) / max(self.size - self.horizon, 1)


def _paint_sky(scene: _Scene) -> None:
    """A vertical gradient with the sun's glow, above the horizon (ground covers the rest)."""
    light, size, horizon = scene.light, scene.size, scene.horizon
    rows = scene.rows[:horizon]
    height = (rows / horizon) ** 0.75
    gradient = light.zenith + (light.horizon - light.zenith) * height[None]
    sky = scene.photo[:, :horizon]
    sky[:] = gradient
    if light.glow > 0:
        sun_row = light.sun_height * horizon
        sun_column = light.sun_x * size
        distance = (scene.columns - sun_column) ** 2 + (rows - sun_row) ** 2
        distance *= 1.0 / (0.22 * size) ** 2
        glow = np.exp(-distance)
        glow *= light.glow
        sky += glow[None] * (light.sun * 235.0 - gradient)
        # The disc radius is measured in units of the glow's radius.
        disc = distance < ((0.025 + 0.012 * (light.name != "day")) / 0.22) ** 2
        np.copyto(sky, np.minimum(light.sun * 245.0, 255.0), where=disc)
    # Long horizontal strokes, as if the sky were laid in with a wide brush.
    brush = _noise(scene.rng, horizon, size, 10, 3, octaves=2)
    sky += 2.0 * brush[None]
    scene.labels[:horizon] = SKY


def _paint_clouds(scene: _Scene) -> None:
    """Soft cumulus from thresholded noise: bright tops facing the sky, grey bellies."""
    light, size, horizon, rng = scene.light, scene.size, scene.horizon, scene.rng
    if horizon < 4:
        return
    # Large masses carry the shape and the overall light; small billows add rims and hollows.
    masses = _noise(rng, horizon, size, 2, 3, octaves=2)
    billows = _noise(rng, horizon, size, 6, 10, octaves=2)
    density = 0.85 * masses + 0.4 * billows
    # Clouds thin out toward the horizon, where the sky is seen through more air.
    density += 0.35 - 1.6 * (scene.rows[:horizon] / horizon) ** 2
    threshold = float(np.interp(light.cloud_cover, (0.0, 1.0), (1.6, -0.6)))
    cover = density - threshold
    mask = cover > 0
    cloudy_rows = np.flatnonzero(mask.any(axis=1))
    if cloudy_rows.size == 0:
        return
    last = int(cloudy_rows[-1]) + 1
    masses, billows, cover, mask = masses[:last], billows[:last], cover[:last], mask[:last]
    # Density rising downward means the top of a cloud or billow, facing the sky: lit.
    lit = 0.45 + 0.25 * cover
    for field, shift, weight in (
        (masses, max(size // 20, 1), 1.0),
        (billows, max(size // 64, 1), 0.5),
    ):
        lit[shift:] += weight * (field[shift:] - field[:-shift])
    lit = np.clip(lit, 0.0, 1.0)
    color = light.cloud_shade + (light.cloud_lit - light.cloud_shade) * lit[None]
    # Feather the edge a little into the sky behind, as a soft brush would.
    edge = np.clip(0.45 + cover * 4.0, 0.0, 1.0)[None]
    behind = scene.photo[:, :last]
    color -= behind
    color *= edge
    color += behind
    scene.paint(0, 0, mask, CLOUD, color)


def _paint_mountains(scene: _Scene) -> None:
    """One to three ridges; farther ones paler and bluer, snow above a ragged snow line."""
    light, size, horizon, rng = scene.light, scene.size, scene.horizon, scene.rng
    count = int(rng.choice([0, 1, 2, 3], p=[0.12, 0.3, 0.33, 0.25]))
    if count == 0 or horizon < 8:
        return
    # Ridged noise stretched downhill reads as spurs and gullies; light them from the
    # terrain's slope across and down the face.
    terrain = _noise(rng, horizon, size, 3, 9, octaves=4, persistence=0.55)
    gullies = 1.0 - 2.0 * np.abs(np.tanh(0.7 * terrain))
    across = np.pad(np.diff(gullies, axis=1), ((0, 0), (1, 0)), mode="edge")
    down = np.pad(np.diff(gullies, axis=0), ((1, 0), (0, 0)), mode="edge")
    relief = size / 24.0
    gully_light = np.tanh((light.side * relief) * across - (0.6 * relief) * down)
    rock = _rgb(*[(112, 102, 96), (96, 98, 104), (120, 106, 88), (92, 90, 86)][rng.integers(4)])
    vegetation = _rgb(*[(74, 98, 60), (92, 110, 70), (70, 86, 66)][rng.integers(3)])
    snowy = rng.random() < 0.6
    snow_albedo = _rgb(236, 240, 248)
    # Farther ridges rise higher on screen; one snow line (height above the horizon) holds
    # for the whole range, so only the tall peaks carry snow.
    peaks = [
        horizon * float(rng.uniform(0.25, 0.8)) * (0.7 + 0.15 * (count - 1 - index))
        for index in range(count)
    ]
    snow_line = max(peaks) * float(rng.uniform(0.45, 0.8))
    for index, peak in enumerate(peaks):
        distance_rank = count - 1 - index
        base = peak * float(rng.uniform(0.05, 0.35))
        # Ridged noise gives sharp summits; the jagged detail is added after, so tall
        # ridges do not turn into cliffs.
        cells = int(rng.integers(2, 5))
        shape = _line_noise(rng, size, cells, octaves=3)
        detail = _line_noise(rng, size, 8 * cells, octaves=2)
        ridged = 1.0 - np.abs(np.tanh(0.8 * shape))
        mix = float(rng.uniform(0.2, 0.8))
        profile = (0.5 + 0.3 * shape) * (1 - mix) + ridged * mix + 0.06 * detail
        profile = (profile - profile.min()) / max(float(np.ptp(profile)), 1e-6)
        top = horizon - (base + (peak - base) * profile)
        first = min(max(int(top.min()), 0), horizon - 1)
        rows = scene.rows[first:horizon]
        mask = rows >= top
        slope = np.gradient(top)
        depth = (rows - top) * (1.0 / max(peak, 1.0))
        # A face sloping down toward the sun is lit; the effect fades below the crest where
        # the gullies' own slopes take over.
        facing = np.tanh(1.6 * light.side * slope) * np.exp(-3.0 * depth)
        lit = 0.5 + 0.4 * facing + 0.35 * gully_light[first:]
        green = np.clip(2.2 * depth - 0.5 + 0.4 * gullies[first:], 0.0, 1.0)
        albedo = rock + (vegetation - rock) * green[None]
        snow = np.zeros_like(mask)
        if snowy:
            # A ragged snow line: it wanders with the terrain and slides off steep crests.
            ragged = 0.05 * terrain[first:] - 0.03 * scene.leaves[first:horizon]
            altitude = horizon - rows + peak * (ragged - 0.15 * np.abs(slope))
            snow = mask & (altitude > snow_line)
            # Snow in shade still glows with skylight, so its shadows stay light and blue.
            albedo = np.where(snow[None], snow_albedo, albedo)
            lit = np.where(snow, 0.45 + 0.55 * lit, lit)
        color = light.shade(albedo, np.clip(lit, 0.0, 1.0))
        mist = 0.25 * np.clip(1.0 - (horizon - rows) / max(0.35 * peak, 1.0), 0.0, 1.0) ** 2
        haze = np.clip(0.08 + 0.22 * distance_rank + mist + float(rng.uniform(0, 0.08)), 0, 0.9)
        color = light.haze(color, haze)
        scene.paint(first, 0, mask & ~snow, MOUNTAIN, color)
        scene.paint(first, 0, snow, SNOW, color)


def _paint_forest_edge(scene: _Scene) -> None:
    """A band of distant trees along the horizon, in patches."""
    light, size, horizon, rng = scene.light, scene.size, scene.horizon, scene.rng
    if rng.random() < 0.45 or horizon < 8:
        return
    extent = _line_noise(rng, size, 3, octaves=2) + float(rng.uniform(-0.5, 0.8))
    crowns = 1.0 - np.abs(np.tanh(_line_noise(rng, size, max(size // 5, 4), octaves=1)))
    band = size * float(rng.uniform(0.015, 0.05))
    height = band * np.clip(extent, 0.0, 1.0) * (0.55 + 0.45 * crowns)
    top_row = max(int(horizon - band - 1), 0)
    rows = scene.rows[top_row:horizon]
    mask = (rows >= horizon - height) & (height > 0.7)
    if not mask.any():
        return
    slope = np.gradient(height)
    lit = np.clip(0.4 - 0.8 * light.side * slope + 0.25 * scene.leaves[top_row:horizon], 0, 1)
    color = light.haze(light.shade(_rgb(48, 78, 52), lit), float(rng.uniform(0.3, 0.5)))
    scene.paint(top_row, 0, mask, TREE, color)


_GRASS_PALETTES = (
    ((78, 132, 48), (128, 150, 62)),
    ((96, 140, 58), (168, 160, 82)),
    ((66, 112, 52), (104, 128, 60)),
    ((140, 138, 70), (176, 150, 88)),
    ((84, 128, 70), (120, 140, 80)),
)


def _paint_ground(scene: _Scene) -> None:
    """Grass below the horizon: patchy fields in perspective, darker and coarser up close."""
    light, size, horizon, rng = scene.light, scene.size, scene.horizon, scene.rng
    height = size - horizon
    near = (scene.rows[horizon:] - horizon + 1) / height
    # Perspective lookup into a wrapping texture: field patches shrink toward the horizon.
    texture_size = 64
    fields = _tiling_noise(rng, texture_size, 8)
    distance = 1.0 / (near + 0.06)
    texture_rows = (distance * 12.0).astype(np.int32) % texture_size
    spread = (scene.columns * (1.0 / size) - 0.5) * (distance * 45.0) + 4096.0
    texture_columns = spread.astype(np.int32) % texture_size
    patches = fields[texture_rows, texture_columns]
    lush, dry = (_rgb(*color) for color in _GRASS_PALETTES[rng.integers(len(_GRASS_PALETTES))])
    blend = np.clip(0.5 + 0.35 * patches, 0.0, 1.0)
    albedo = lush + (dry - lush) * blend[None]
    hills = _noise(rng, height, size, 2, 3, octaves=2)
    blades = _noise(rng, height, size, max(height // 6, 2), max(size // 2, 2), octaves=1)
    strokes = scene.leaves[horizon:]
    lit = 0.72 + 0.12 * hills - 0.25 * near
    lit += 0.08 * strokes * (0.3 + near) + 0.07 * blades * near**2
    color = light.shade(albedo, np.clip(lit, 0.0, 1.0))
    color = light.haze(color, 0.55 * (1.0 - near) ** 4)
    scene.paint(horizon, 0, None, GRASS, color)


def _paint_water(scene: _Scene) -> None:
    """A lake or sea mirroring the sky and mountains, with ripples; sand on some shores."""
    light, size, horizon, rng = scene.light, scene.size, scene.horizon, scene.rng
    if rng.random() > 0.45:
        return
    height = size - horizon
    columns = scene.columns[0]
    if rng.random() < 0.4:
        reach = height * float(rng.uniform(0.15, 0.5))
        shore = reach * (1.0 + 0.2 * _line_noise(rng, size, 3, octaves=4))
        shore += height * float(rng.uniform(-0.15, 0.15)) * (columns / size - 0.5)
    else:
        center = size * float(rng.uniform(0.2, 0.8))
        half_width = size * float(rng.uniform(0.25, 0.6))
        reach = height * float(rng.uniform(0.2, 0.6))
        # A round lake seen at a low angle: a flattened ellipse with a ragged near shore.
        across = np.clip(1.0 - ((columns - center) / half_width) ** 2, 0.0, None)
        shore = reach * (np.sqrt(across) + 0.15 * _line_noise(rng, size, 4, octaves=4)) - 1.0
    shore_row = horizon + shore
    lowest = int(min(np.ceil(shore_row.max()) + 1, size))
    if lowest <= horizon:
        return
    scene.water_shore = shore_row
    rows = scene.rows[horizon:lowest]
    mask = rows < shore_row
    near = (rows - horizon) / height
    ripples = _noise(rng, lowest - horizon, size, max(height // 2, 2), 5, octaves=2)
    offset = (ripples * (1.5 + 14.0 * near) * (size / 256.0)).astype(np.int32)
    source_rows = np.clip(2 * horizon - 1 - rows.astype(np.int32), 0, horizon - 1)
    source_columns = np.clip(np.arange(size, dtype=np.int32) + offset, 0, size - 1)
    reflection = scene.photo[:, source_rows, source_columns]
    deep = _rgb(34, 62, 88) * light.sun
    # Fresnel: grazing views near the horizon reflect more than the water under our feet.
    reflectance = (0.85 - 0.45 * np.sqrt(near))[None]
    reflection *= 0.88
    reflection -= deep
    reflection *= reflectance
    reflection += deep
    color = reflection
    color *= (1.0 + 0.07 * np.tanh(ripples))[None]
    if light.glow > 0.3:
        sun_column = light.sun_x * size
        path = np.exp(-(((scene.columns - sun_column) / (size * (0.03 + 0.1 * near))) ** 2))
        glints = np.clip(ripples - 0.6, 0.0, 1.0) * path
        color += (glints * 160.0)[None] * (light.sun / light.sun.max())
    scene.paint(horizon, 0, mask, WATER, color)

    if rng.random() < 0.55:
        width = size * float(rng.uniform(0.02, 0.08))
        ground_rows = scene.rows[horizon:]
        beach = shore_row + width * (0.3 + 1.5 * (shore_row - horizon) / height)
        sand_mask = (ground_rows >= shore_row) & (ground_rows < beach)
        if sand_mask.any():
            near = (ground_rows - horizon) / height
            wet = np.clip(1.0 - (ground_rows - shore_row) / (0.4 * width + 1.0), 0.0, 1.0)
            lit = np.clip(0.78 + 0.08 * scene.leaves[horizon:] - 0.3 * wet, 0.0, 1.0)
            sand = light.haze(light.shade(_rgb(214, 192, 146), lit), 0.4 * (1 - near) ** 4)
            scene.paint(horizon, 0, sand_mask, SAND, sand)


def _paint_road(scene: _Scene) -> None:
    """A road or path narrowing toward the horizon or the water's edge."""
    light, size, horizon, rng = scene.light, scene.size, scene.horizon, scene.rng
    if rng.random() < 0.55:
        return
    far_column = size * float(rng.uniform(0.25, 0.75))
    top = float(horizon)
    if scene.water_shore is not None:
        top = max(top, float(scene.water_shore[int(far_column)]) + 2.0)
        if top > size - 0.25 * (size - horizon):
            return
    start = int(np.ceil(top))
    rows = scene.rows[start:]
    along = (rows - top) / max(size - top, 1.0)
    near_column = size * float(rng.uniform(0.1, 0.9))
    bend = size * float(rng.uniform(-0.35, 0.35))
    center = far_column + (near_column - far_column) * along + bend * along * (1.0 - along)
    asphalt = rng.random() < 0.4
    near_width = size * float(rng.uniform(0.12, 0.3) if asphalt else rng.uniform(0.06, 0.2))
    half_width = 0.5 * (0.004 * size + near_width * along**1.1)
    across = np.abs(scene.columns - center) / half_width
    mask = across < 1.0
    if scene.water_shore is not None:
        mask &= scene.labels[start:] != WATER
    albedo = _rgb(88, 86, 90) if asphalt else _rgb(150, 124, 92)
    lit = np.clip(0.8 + 0.08 * scene.leaves[start:] - 0.25 * across**4, 0.0, 1.0)
    if asphalt:
        # Dashes evenly spaced on the ground, so they crowd together toward the horizon.
        dashes = np.sin(7.0 / (along + 0.08)) > 0.1
        marking = (across < 0.05 + 0.04 * (1 - along)) & dashes
        albedo = np.where(marking[None], _rgb(230, 230, 230), albedo)
    color = light.shade(albedo, lit)
    color = light.haze(color, 0.5 * (1.0 - (rows - horizon) / (size - horizon)) ** 4)
    scene.paint(start, 0, mask, ROAD, color)


# -- objects standing on the ground --------------------------------------------------------


@dataclass(frozen=True)
class _Window:
    """A box of the image clipped to its edges, with pixel coordinates and leaf texture."""

    top: int
    left: int
    rows: np.ndarray
    columns: np.ndarray
    leaves: np.ndarray


def _window(scene: _Scene, left: float, right: float, top: float, bottom: float) -> _Window | None:
    x0, x1 = max(math.floor(left), 0), min(math.ceil(right) + 1, scene.size)
    y0, y1 = max(math.floor(top), 0), min(math.ceil(bottom) + 1, scene.size)
    if x1 <= x0 or y1 <= y0:
        return None
    return _Window(y0, x0, scene.rows[y0:y1], scene.columns[:, x0:x1], scene.leaves[y0:y1, x0:x1])


def _paint_conifer(scene: _Scene, column: float, base: float, scale: float) -> None:
    """A spruce: stacked tiers that widen downward, lit on the sun's side."""
    light, rng = scene.light, scene.rng
    height = scale * float(rng.uniform(0.3, 0.6))
    width = height * float(rng.uniform(0.3, 0.45))
    window = _window(scene, column - width, column + width, base - height, base)
    if window is None or height < 3:
        return
    rows, columns = window.rows, window.columns
    trunk_height = 0.12 * height
    position = (rows - (base - height)) / (height - trunk_height)
    within_tier = (position * float(rng.integers(3, 6))) % 1.0
    spread = 0.5 * width * position * (0.55 + 0.45 * within_tier)
    offset = columns - column
    crown = (position >= 0) & (position <= 1.0) & (np.abs(offset) <= spread)
    trunk = (
        (rows > base - trunk_height - 1)
        & (rows <= base)
        & (np.abs(offset) <= max(0.06 * width, 0.6))
    )
    # The underside of each tier sits in its own shadow.
    lit = 0.45 + (0.9 * light.side / width) * offset - 0.3 * within_tier + 0.2 * window.leaves
    needles = _rgb(*[(38, 72, 46), (44, 80, 42), (34, 64, 52)][rng.integers(3)])
    albedo = np.where(crown[None], needles, _rgb(80, 56, 40))
    color = light.shade(albedo, np.clip(lit, 0.0, 1.0))
    color = light.haze(color, 0.5 * (1.0 - scene.nearness(base)) ** 3)
    scene.paint(window.top, window.left, crown | trunk, TREE, color)


def _paint_broadleaf(scene: _Scene, column: float, base: float, scale: float) -> None:
    """A round deciduous crown of a few overlapping lobes on a short trunk."""
    light, rng = scene.light, scene.rng
    height = scale * float(rng.uniform(0.25, 0.5))
    radius = height * float(rng.uniform(0.28, 0.38))
    window = _window(scene, column - 1.5 * radius, column + 1.5 * radius, base - height, base)
    if window is None or radius < 1.5:
        return
    rows, columns, leaves = window.rows, window.columns, window.leaves
    center_row = base - height + radius
    crown = np.zeros(leaves.shape, bool)
    for _ in range(4):
        lobe_row = center_row + radius * float(rng.uniform(-0.3, 0.3))
        lobe_column = column + radius * float(rng.uniform(-0.55, 0.55))
        lobe_radius = radius * float(rng.uniform(0.55, 0.8))
        distance = ((rows - lobe_row) ** 2 + (columns - lobe_column) ** 2) / lobe_radius**2
        crown |= distance + 0.25 * leaves < 1.0
    trunk = (
        (rows > center_row) & (rows <= base) & (np.abs(columns - column) <= max(0.12 * radius, 0.6))
    )
    # Light the crown as one ball facing a sun from the side and above.
    normal_x = np.clip((columns - column) / (1.2 * radius), -1, 1)
    normal_y = np.clip((rows - center_row) / (1.2 * radius), -1, 1)
    normal_z = np.sqrt(np.clip(1.0 - normal_x**2 - normal_y**2, 0.0, 1.0))
    facing = 0.62 * light.side * normal_x - 0.55 * normal_y + 0.56 * normal_z
    lit = np.clip(0.1 + 0.8 * facing + 0.3 * leaves, 0.0, 1.0)
    foliage = _rgb(*[(62, 104, 46), (80, 116, 50), (52, 92, 50), (128, 112, 46)][rng.integers(4)])
    albedo = np.where(crown[None], foliage, _rgb(78, 58, 42))
    color = light.haze(light.shade(albedo, lit), 0.5 * (1.0 - scene.nearness(base)) ** 3)
    scene.paint(window.top, window.left, crown | trunk, TREE, color)


def _paint_rock(scene: _Scene, column: float, base: float, scale: float) -> None:
    """A boulder with flat, chiselled facets, half sunk into the ground."""
    light, rng = scene.light, scene.rng
    half_width = scale * float(rng.uniform(0.03, 0.09))
    half_height = half_width * float(rng.uniform(0.45, 0.8))
    center_row = base - 0.7 * half_height
    window = _window(
        scene, column - half_width, column + half_width, center_row - half_height, base
    )
    if window is None or half_width < 1.5:
        return
    normal_x = (window.columns - column) / half_width
    normal_y = (window.rows - center_row) / half_height
    mask = (normal_x**2 + normal_y**2 + 0.3 * window.leaves < 1.0) & (window.rows <= base)
    normal_z = np.sqrt(np.clip(1.0 - normal_x**2 - normal_y**2, 0.0, 1.0))
    facing = 0.6 * light.side * normal_x - 0.6 * normal_y + 0.5 * normal_z
    # Light quantized to a few steps blocks the stone in as a painter would.
    lit = np.clip(np.round((0.2 + 0.7 * facing + 0.25 * window.leaves) * 3.0) / 3.0, 0.0, 1.0)
    stone = _rgb(*[(128, 124, 118), (110, 108, 106), (140, 128, 112)][rng.integers(3)])
    color = light.haze(light.shade(stone, lit), 0.45 * (1.0 - scene.nearness(base)) ** 3)
    scene.paint(window.top, window.left, mask, ROCK, color)


_WALL_COLORS = ((228, 220, 200), (196, 90, 70), (170, 130, 90), (214, 200, 160), (180, 186, 190))
_ROOF_COLORS = ((150, 62, 44), (70, 64, 66), (110, 72, 50), (60, 80, 100))


def _paint_building(scene: _Scene, column: float, base: float, scale: float) -> None:
    """A gabled house seen from a corner: front wall, gable end, and the roof between them."""
    light, rng = scene.light, scene.rng
    front = scale * float(rng.uniform(0.25, 0.5))
    depth = front * float(rng.uniform(0.3, 0.6))
    wall = front * float(rng.uniform(0.35, 0.6))
    roof = depth * float(rng.uniform(0.45, 0.9))
    gable_right = rng.random() < 0.5
    walls = _rgb(*_WALL_COLORS[rng.integers(len(_WALL_COLORS))])
    roofing = _rgb(*_ROOF_COLORS[rng.integers(len(_ROOF_COLORS))])
    left_edge = column - 0.5 * (front + depth)
    window = _window(scene, left_edge, left_edge + front + depth, base - wall - roof, base)
    if window is None or front < 4:
        return
    rows = window.rows
    eave = base - wall
    # Measure across the house from its front corner, mirrored when the gable is on the left.
    x = window.columns - left_edge
    if not gable_right:
        x = (front + depth) - x
    rise = np.clip((eave - rows) / roof, 0.0, None)
    under_roof = (rows <= eave) & (rise <= 1.0)
    walls_height = (rows > eave) & (rows <= base)
    front_wall = (x >= 0) & (x < front) & walls_height
    end_wall = (x >= front) & (x < front + depth) & walls_height
    gable = (
        under_roof & (x >= front + 0.5 * depth * rise) & (x < front + depth - 0.5 * depth * rise)
    )
    roof_mask = under_roof & (x >= 0.5 * depth * rise) & (x < front + 0.5 * depth * rise)
    mask = front_wall | end_wall | gable | roof_mask
    if not mask.any():
        return
    # Whichever face turns toward the sun is lit; the gable end faces the side it sits on.
    end_faces_sun = (light.side > 0) == gable_right
    front_lit, end_lit = (0.55, 0.95) if end_faces_sun else (0.9, 0.25)
    lit = np.where(front_wall, front_lit, end_lit).astype(np.float32)
    shingles = 0.75 + 0.1 * np.sin(rows * (6.0 / max(roof / 6.0, 1.0)))
    lit = np.where(roof_mask, shingles, lit)
    albedo = np.where(roof_mask[None], roofing, walls)
    if front > 10:
        panes = max(int(front / 9), 1)
        across = (x * (panes / front)) % 1.0
        up_the_wall = (rows - eave) / wall
        glass = front_wall & (np.abs(across - 0.5) < 0.18) & (np.abs(up_the_wall - 0.42) < 0.16)
        # Lit windows glow on their own; dark ones take the wall's light.
        pane = _rgb(250, 200, 110) / light.sun if light.windows_lit else _rgb(50, 62, 80)
        albedo = np.where(glass[None], pane, albedo)
        if light.windows_lit:
            lit = np.where(glass, 1.0, lit)
    color = light.shade(albedo, lit)
    color = light.haze(color, 0.5 * (1.0 - scene.nearness(base)) ** 3)
    scene.paint(window.top, window.left, mask, BUILDING, color)


def _place_objects(scene: _Scene) -> None:
    """Scatter trees, rocks and houses on open ground and paint them far to near."""
    rng, size, horizon = scene.rng, scene.size, scene.horizon
    height = size - horizon
    if height < 4:
        return
    placed: list[tuple[float, float, int]] = []

    def try_place(column: float, row: float, kind: int, allowed: tuple[int, ...]) -> None:
        on_ground = 0 <= column < size and horizon + 1 <= row < size
        if on_ground and scene.labels[int(row), int(column)] in allowed:
            placed.append((row, column, kind))

    style = rng.random()
    if style < 0.3:
        tree_count = int(rng.integers(0, 5))
    elif style < 0.75:
        tree_count = int(rng.integers(5, 20))
    else:
        tree_count = int(rng.integers(20, 40))
    groves = [(size * float(rng.uniform(0, 1)), float(rng.uniform(0.05, 0.8))) for _ in range(3)]
    conifer_share = float(rng.uniform(0.0, 1.0))
    for _ in range(tree_count):
        grove_column, grove_depth = groves[rng.integers(len(groves))]
        depth = min(max(grove_depth + float(rng.normal(0, 0.12)), 0.0), 1.0)
        column = grove_column + float(rng.normal(0, 0.18)) * size
        kind = 0 if rng.random() < conifer_share else 1
        try_place(column, horizon + 1 + depth**1.5 * (height - 2), kind, (GRASS,))
    for _ in range(int(rng.integers(0, 9))):
        column = size * float(rng.uniform(0, 1))
        row = horizon + 1 + float(rng.uniform(0.1, 1.0)) * (height - 2)
        try_place(column, row, 2, (GRASS, SAND))
    if rng.random() < 0.55:
        for _ in range(int(rng.integers(1, 6))):
            column = size * float(rng.uniform(0.05, 0.95))
            row = horizon + 1 + float(rng.uniform(0.02, 0.5)) ** 1.3 * (height - 2)
            try_place(column, row, 3, (GRASS,))

    painters = (_paint_conifer, _paint_broadleaf, _paint_rock, _paint_building)
    for row, column, kind in sorted(placed):
        # Things standing on the ground shrink linearly with their distance from the viewer.
        scale = max(row - horizon, 1.0) * size / height
        painters[kind](scene, column, row, scale)


# -- public interface ----------------------------------------------------------------------


def scene_seed(seed: int, index: int) -> int:
    """The seed ``render_scene`` gets for scene ``index`` of a dataset made with ``seed``."""
    if seed < 0 or index < 0:
        raise DataError(f"seed and index must be non-negative, got seed={seed}, index={index}")
    state = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 32 | int(state[1])


def render_scene(seed: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Paint one landscape.

    Returns ``labels``: (size, size) uint8 class ids from ``LANDSCAPE_PALETTE``, and ``photo``:
    (size, size, 3) uint8 RGB. Deterministic in (seed, size).
    """
    if size < MINIMUM_SIZE:
        raise DataError(f"scene size must be at least {MINIMUM_SIZE} pixels, got {size}")
    if seed < 0:
        raise DataError(f"seed must be non-negative, got {seed}")
    rng = np.random.default_rng(seed)
    light = _pick_lighting(rng)
    horizon = int(size * float(rng.uniform(0.38, 0.62)))
    scene = _Scene(
        rng=rng,
        size=size,
        horizon=horizon,
        light=light,
        labels=np.empty((size, size), np.uint8),
        photo=np.empty((3, size, size), np.float32),
        rows=np.arange(size, dtype=np.float32)[:, None],
        columns=np.arange(size, dtype=np.float32)[None, :],
        leaves=_noise(rng, size, size, max(size // 6, 2), max(size // 6, 2), octaves=2),
    )
    _paint_sky(scene)
    _paint_clouds(scene)
    _paint_mountains(scene)
    _paint_forest_edge(scene)
    _paint_ground(scene)
    _paint_water(scene)
    _paint_road(scene)
    _place_objects(scene)
    np.clip(scene.photo, 0.0, 255.0, out=scene.photo)
    photo = np.ascontiguousarray(scene.photo.astype(np.uint8).transpose(1, 2, 0))
    return scene.labels, photo


def _save_png_atomic(image: Image.Image, path: Path) -> None:
    """A killed run leaves no half-written PNG that would pass for a finished image."""
    write_atomic(path, lambda temp: image.save(temp, format="PNG", **PNG_OPTIONS), sync=False)


def _split_counts(n: int, splits: tuple[float, float, float]) -> tuple[int, int, int]:
    train = max(round(n * splits[0]), 1)
    val = max(round(n * splits[1]), 1)
    # Every split keeps at least one image; the excess comes off the larger of the two.
    while train + val > n - 1:
        if train >= val and train > 1:
            train -= 1
        else:
            val -= 1
    return train, val, n - train - val


def write_synthetic_dataset(
    out: str | Path,
    n: int,
    size: int = 256,
    seed: int = 0,
    task: str = "labels",
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    progress: bool = False,
) -> dict:
    """Write ``n`` scenes under ``out``, split into train/val/test.

    ``task="labels"``: ``palette.json``, ``<split>/A/<index>.png`` (mode P label map whose
    pixel values are class ids) and ``<split>/B/<index>.png`` (RGB photo). ``task="color"``:
    ``<split>/<index>.png`` RGB photos only. The first ``round(n * splits[0])`` indices go
    to train, the next to val, the rest to test, each with at least one. Files are named by
    scene index and scene ``i`` is ``render_scene(scene_seed(seed, i), size)``, so a file's
    content does not depend on ``n``. Returns a summary with ``counts`` per split,
    ``seconds`` and ``pairs_per_second``.
    """
    if task not in TASKS:
        raise DataError(f"unknown synthetic task {task!r}; expected one of {TASKS}")
    if n < len(SPLIT_NAMES):
        raise DataError(f"need at least {len(SPLIT_NAMES)} images (one per split), got n={n}")
    if size < MINIMUM_SIZE:
        raise DataError(f"image size must be at least {MINIMUM_SIZE} pixels, got {size}")
    if seed < 0:
        raise DataError(f"seed must be non-negative, got {seed}")
    if len(splits) != len(SPLIT_NAMES) or any(fraction < 0 for fraction in splits):
        raise DataError(f"splits must be three non-negative fractions, got {splits!r}")
    if abs(sum(splits) - 1.0) > 1e-6:
        raise DataError(f"split fractions must sum to 1, got {splits!r} (sum {sum(splits)})")

    out = Path(out)
    counts = dict(zip(SPLIT_NAMES, _split_counts(n, splits), strict=True))
    assignments = [name for name in SPLIT_NAMES for _ in range(counts[name])]
    palette = [channel for entry in LANDSCAPE_PALETTE for channel in entry.color]
    if task == "labels":
        entries = [asdict(entry) for entry in LANDSCAPE_PALETTE]
        write_text_atomic(out / "palette.json", json.dumps(entries, indent=2) + "\n")

    started = time.perf_counter()
    for index in tqdm(range(n), desc="synthesizing", unit="pair", disable=not progress):
        labels, photo = render_scene(scene_seed(seed, index), size)
        split = out / assignments[index]
        name = f"{index:05d}.png"
        if task == "labels":
            label_image = Image.fromarray(labels)
            label_image.putpalette(palette)
            _save_png_atomic(label_image, split / "A" / name)
            _save_png_atomic(Image.fromarray(photo), split / "B" / name)
        else:
            _save_png_atomic(Image.fromarray(photo), split / name)
    seconds = time.perf_counter() - started
    summary = {
        "out": str(out),
        "task": task,
        "size": size,
        "seed": seed,
        "counts": counts,
        "seconds": round(seconds, 3),
        "pairs_per_second": round(n / seconds, 2) if seconds > 0 else float("inf"),
    }
    logger.info(
        "wrote %d synthetic %s pairs to %s in %.1fs (%.1f pairs/s)",
        n,
        task,
        out,
        seconds,
        summary["pairs_per_second"],
    )
    return summary
