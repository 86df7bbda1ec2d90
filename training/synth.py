"""Procedural painted landscapes: label maps with matching photos, the built-in dataset.

Each scene is painted back to front (sky, clouds, mountain ridges, distant forest, ground,
water, sand, road, then trees, rocks and buildings sorted by distance). Every layer writes
its class id into the label map and its shaded color into the photo through the same mask,
so the two agree pixel for pixel. Texture comes from value noise: small random grids
upsampled by Pillow, which is fast enough to render and write 50+ pairs a second on one core.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from model.spec import LabelClass, write_text_atomic
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
# on these images, and writing would otherwise dominate the cost of a pair.
PNG_OPTIONS = {"compress_level": 1, "compress_type": zlib.Z_RLE}

# Standard deviation of bicubically upsampled uniform noise; used to give noise unit spread.
_UPSAMPLED_UNIFORM_STD = 0.238
# Small matrix products run on one thread in OpenBLAS; larger grids go through Pillow instead.
_SMALL_PRODUCT = 200_000


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
    work = height * width * max(grid_height, grid_width)
    if work < _SMALL_PRODUCT:
        return _cubic_resampler(grid_height, height) @ grid @ _cubic_resampler(grid_width, width).T
    image = Image.fromarray(np.ascontiguousarray(grid, dtype=np.float32))
    return np.asarray(image.resize((width, height), Image.Resampling.BICUBIC))


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
    total *= 1.0 / (_UPSAMPLED_UNIFORM_STD * math.sqrt(weights))
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
    # Bicubic reads two cells either side; padding by wrap-around makes the crop periodic.
    padded = np.pad(grid, 2, mode="wrap")
    field = _resample(padded, (cells + 4) * cell, (cells + 4) * cell)
    start = 2 * cell
    return field[start : start + size, start : start + size] / _UPSAMPLED_UNIFORM_STD


# -- lighting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lighting:
    """The time of day: sky colors and how sunlit and shadowed surfaces are tinted."""

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
        """Color of a surface with the given albedo; ``lit`` is 0 in shadow, 1 facing the sun."""
        color = lit[..., None] * (self.sun - self.ambient)
        color += self.ambient
        color *= albedo
        return color

    def haze(self, color: np.ndarray, amount: np.ndarray | float) -> np.ndarray:
        """Blend ``color`` in place toward the horizon sky: far things fade into the air."""
        if isinstance(amount, np.ndarray):
            color *= (1.0 - amount)[..., None]
            color += amount[..., None] * self.horizon
        else:
            color *= 1.0 - amount
            color += amount * self.horizon
        return color


_TIMES_OF_DAY: dict[str, dict[str, tuple[float, ...]]] = {
    "day": {
        "zenith": (55, 115, 205),
        "horizon": (180, 212, 236),
        "sun": (1.12, 1.08, 1.0),
        "ambient": (0.52, 0.58, 0.72),
        "cloud_lit": (252, 252, 250),
        "cloud_shade": (160, 172, 196),
        "cover": (0.15, 0.5),
        "glow": (0.25,),
        "sun_height": (0.05, 0.2),
    },
    "golden": {
        "zenith": (75, 105, 175),
        "horizon": (250, 196, 128),
        "sun": (1.22, 0.98, 0.7),
        "ambient": (0.48, 0.46, 0.62),
        "cloud_lit": (255, 214, 165),
        "cloud_shade": (150, 130, 150),
        "cover": (0.15, 0.45),
        "glow": (0.6,),
        "sun_height": (0.35, 0.7),
    },
    "sunset": {
        "zenith": (45, 52, 112),
        "horizon": (248, 128, 72),
        "sun": (1.25, 0.78, 0.52),
        "ambient": (0.38, 0.34, 0.55),
        "cloud_lit": (255, 165, 110),
        "cloud_shade": (105, 80, 118),
        "cover": (0.2, 0.5),
        "glow": (0.85,),
        "sun_height": (0.6, 0.9),
    },
    "overcast": {
        "zenith": (125, 134, 150),
        "horizon": (196, 199, 202),
        "sun": (0.9, 0.92, 0.95),
        "ambient": (0.66, 0.68, 0.74),
        "cloud_lit": (222, 223, 228),
        "cloud_shade": (138, 142, 154),
        "cover": (0.6, 0.85),
        "glow": (0.0,),
        "sun_height": (0.2, 0.4),
    },
}


def _pick_lighting(rng: np.random.Generator) -> _Lighting:
    name = str(rng.choice(list(_TIMES_OF_DAY), p=[0.45, 0.22, 0.15, 0.18]))
    preset = _TIMES_OF_DAY[name]

    def color(key: str, jitter: float) -> np.ndarray:
        base = np.asarray(preset[key], np.float32)
        return base + rng.uniform(-jitter, jitter, 3).astype(np.float32)

    side = float(rng.choice([-1.0, 1.0]))
    return _Lighting(
        name=name,
        zenith=color("zenith", 10),
        horizon=color("horizon", 10),
        sun=color("sun", 0.04),
        ambient=color("ambient", 0.04),
        cloud_lit=color("cloud_lit", 6),
        cloud_shade=color("cloud_shade", 8),
        cloud_cover=float(rng.uniform(*preset["cover"])),
        glow=preset["glow"][0],
        side=side,
        sun_x=0.5 + side * float(rng.uniform(0.1, 0.4)),
        # Fraction of the way from the top of the image down to the horizon.
        sun_height=float(rng.uniform(*preset["sun_height"])),
        windows_lit=name == "sunset" or (name == "golden" and rng.random() < 0.5),
    )


# -- the scene being painted ---------------------------------------------------------------


@dataclass
class _Scene:
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
        height, width = (mask if mask is not None else color).shape[:2]
        window = (slice(top, top + height), slice(left, left + width))
        if mask is None:
            self.labels[window] = label
            self.photo[window] = color
            return
        self.labels[window][mask] = label
        np.copyto(self.photo[window], color, where=mask[..., None])

    def ground_fraction(self, row: float) -> float:
        """0 at the horizon, 1 at the bottom edge: how near the viewer a ground row is."""
        return (row - self.horizon) / max(self.size - self.horizon, 1)


def _paint_sky(scene: _Scene) -> None:
    """A vertical gradient with the sun's glow; only above the horizon, the ground covers the rest."""
    light, size, horizon = scene.light, scene.size, scene.horizon
    rows = scene.rows[:horizon]
    height = (rows / horizon) ** 0.75
    gradient = light.zenith + (light.horizon - light.zenith) * height[..., None]
    sky = scene.photo[:horizon]
    sky[:] = gradient
    if light.glow > 0:
        sun_row = light.sun_height * horizon
        sun_column = light.sun_x * size
        distance = (scene.columns - sun_column) ** 2 + (rows - sun_row) ** 2
        distance *= 1.0 / (0.22 * size) ** 2
        glow = np.exp(-distance)
        glow *= light.glow
        sky += glow[..., None] * (light.sun * 235.0 - gradient)
        # The disc radius is measured in units of the glow's radius.
        disc = distance < ((0.025 + 0.012 * (light.name != "day")) / 0.22) ** 2
        sky[disc] = np.minimum(light.sun * 245.0, 255.0)
    # Long horizontal strokes, as if the sky were laid in with a wide brush.
    brush = _noise(scene.rng, horizon, size, 10, 3, octaves=2)
    sky += (2.0 * brush)[..., None]
    scene.labels[:horizon] = SKY


def _paint_clouds(scene: _Scene) -> None:
    light, size, horizon, rng = scene.light, scene.size, scene.horizon, scene.rng
    if horizon < 4:
        return
    density = _noise(rng, horizon, size, 2, 3, octaves=4, persistence=0.55)
    # Clouds thin out toward the horizon, where the sky is seen through more air.
    rows = scene.rows[:horizon] / horizon
    density = density - 1.6 * rows**2 + 0.35
    threshold = float(np.interp(light.cloud_cover, (0.0, 1.0), (1.6, -0.6)))
    cover = density - threshold
    mask = cover > 0
    if not mask.any():
        return
    shift = max(size // 40, 1)
    above = np.empty_like(density)
    above[shift:] = density[:-shift]
    above[:shift] = density[:1]
    # Density rising downward means a cloud top facing the sky above: lit. Bellies stay grey.
    lit = np.clip(0.45 + 1.4 * (density - above) + 0.35 * cover, 0.0, 1.0)
    color = light.cloud_shade + (light.cloud_lit - light.cloud_shade) * lit[..., None]
    edge = np.clip(0.45 + cover / 0.25, 0.0, 1.0)[..., None]
    blended = scene.photo[:horizon] + (color - scene.photo[:horizon]) * edge
    scene.paint(0, 0, mask, CLOUD, blended)


def _paint_mountains(scene: _Scene) -> None:
    light, size, horizon, rng = scene.light, scene.size, scene.horizon, scene.rng
    count = int(rng.choice([0, 1, 2, 3], p=[0.12, 0.3, 0.33, 0.25]))
    if count == 0 or horizon < 8:
        return
    gullies = _noise(rng, horizon, size, 2, 14, octaves=3)
    gully_slope = np.empty_like(gullies)
    gully_slope[:, 1:] = np.diff(gullies, axis=1)
    gully_slope[:, 0] = gully_slope[:, 1]
    gully_light = np.tanh(gully_slope * (light.side * size / 14.0))
    rock = np.asarray(
        [(112, 102, 96), (96, 98, 104), (120, 106, 88), (92, 90, 86)][rng.integers(4)],
        np.float32,
    )
    vegetation = np.asarray(
        [(74, 98, 60), (92, 110, 70), (70, 86, 66)][rng.integers(3)], np.float32
    )
    snowy = rng.random() < 0.6
    snow_albedo = np.asarray((236, 240, 248), np.float32)
    for index in range(count):
        distance_rank = count - 1 - index
        peak = horizon * float(rng.uniform(0.25, 0.8)) * (0.7 + 0.15 * distance_rank)
        base = peak * float(rng.uniform(0.05, 0.35))
        shape = _line_noise(rng, size, int(rng.integers(2, 5)), octaves=5, persistence=0.55)
        ridged = 1.0 - np.abs(np.tanh(0.8 * shape))
        mix = float(rng.uniform(0.2, 0.8))
        profile = np.clip(0.5 + 0.3 * shape, 0.0, 1.0) * (1 - mix) + ridged * mix
        profile = (profile - profile.min()) / max(float(np.ptp(profile)), 1e-6)
        top = horizon - (base + (peak - base) * profile)
        first = min(max(int(top.min()), 0), horizon - 1)
        rows = scene.rows[first:horizon]
        mask = rows >= top
        slope = np.gradient(top)
        depth = (rows - top) * (1.0 / max(peak, 1.0))
        facing = np.tanh(1.6 * light.side * slope) * np.exp(-3.0 * depth)
        lit = 0.5 + 0.45 * facing + 0.3 * gully_light[first:]
        green = np.clip(2.2 * depth - 0.5 + 0.4 * gullies[first:], 0.0, 1.0)
        albedo = rock + (vegetation - rock) * green[..., None]
        snow = None
        if snowy:
            snow_line = base + (peak - base) * float(rng.uniform(0.35, 0.75))
            altitude = horizon - rows + 0.12 * peak * gullies[first:] - 0.15 * peak * np.abs(slope)
            snow = mask & (altitude > snow_line)
            # Snow in shade still glows with skylight, so its shadows stay light and blue.
            albedo[snow] = snow_albedo
            lit = np.where(snow, 0.45 + 0.55 * lit, lit)
        color = light.shade(albedo, np.clip(lit, 0.0, 1.0))
        mist = 0.35 * np.clip(1.0 - (horizon - rows) / max(0.35 * peak, 1.0), 0.0, 1.0) ** 2
        haze = np.clip(0.08 + 0.22 * distance_rank + mist + float(rng.uniform(0, 0.08)), 0, 0.9)
        color = light.haze(color, haze)
        if snow is None:
            scene.paint(first, 0, mask, MOUNTAIN, color)
        else:
            scene.paint(first, 0, mask & ~snow, MOUNTAIN, color)
            scene.paint(first, 0, snow, SNOW, color)


def _paint_forest_edge(scene: _Scene) -> None:
    """A band of distant trees along the horizon, in patches."""
    light, size, horizon, rng = scene.light, scene.size, scene.horizon, scene.rng
    if rng.random() < 0.45 or horizon < 8:
        return
    extent = _line_noise(rng, size, 3, octaves=2) + float(rng.uniform(-0.5, 0.8))
    crowns = _line_noise(rng, size, max(size // 5, 4), octaves=1)
    crowns = 1.0 - np.abs(np.tanh(crowns))
    band = size * float(rng.uniform(0.015, 0.05))
    height = band * np.clip(extent, 0.0, 1.0) * (0.55 + 0.45 * crowns)
    top_row = max(int(horizon - band - 1), 0)
    rows = scene.rows[top_row:horizon]
    mask = (rows >= horizon - height) & (height > 0.7)
    if not mask.any():
        return
    leaf = scene.leaves[top_row:horizon]
    slope = np.gradient(height)
    lit = np.clip(0.4 - 0.8 * light.side * slope + 0.25 * leaf, 0.0, 1.0)
    albedo = np.asarray((48, 78, 52), np.float32)
    color = light.haze(light.shade(albedo, lit), float(rng.uniform(0.3, 0.5)))
    scene.paint(top_row, 0, mask, TREE, color)


def _paint_ground(scene: _Scene) -> None:
    """Grass below the horizon: patchy fields in perspective, darker and coarser up close."""
    light, size, horizon, rng = scene.light, scene.size, scene.horizon, scene.rng
    height = size - horizon
    near = (scene.rows[horizon:] - horizon + 1) / height
    # Perspective lookup into a wrapping texture: patches shrink toward the horizon.
    texture_size = 128
    fields = _tiling_noise(rng, texture_size, 8)
    distance = 1.0 / (near + 0.06)
    texture_rows = (distance * 24.0).astype(np.int32) % texture_size
    texture_columns = (
        ((scene.columns / size - 0.5) * distance * 90.0).astype(np.int32) + 4096
    ) % texture_size
    patches = fields[texture_rows, texture_columns]
    palettes = [
        ((78, 132, 48), (128, 150, 62)),
        ((96, 140, 58), (168, 160, 82)),
        ((66, 112, 52), (104, 128, 60)),
        ((140, 138, 70), (176, 150, 88)),
    ]
    lush, dry = (np.asarray(c, np.float32) for c in palettes[rng.integers(len(palettes))])
    blend = np.clip(0.5 + 0.35 * patches, 0.0, 1.0)
    albedo = lush + (dry - lush) * blend[..., None]
    hills = _noise(rng, height, size, 2, 3, octaves=2)
    strokes = _noise(rng, height, size, max(height // 3, 2), max(size // 10, 2), octaves=1)
    blades = _noise(rng, height, size, max(height // 12, 2), max(size // 2, 2), octaves=1)
    lit = np.clip(0.72 + 0.12 * hills - 0.25 * near + 0.08 * strokes * (0.3 + near), 0, 1)
    color = light.shade(albedo, lit)
    color *= (1.0 + 0.06 * blades * near**2)[..., None]
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
        shore = reach * (1.0 + 0.2 * _line_noise(rng, size, 3, octaves=3))
        shore += height * float(rng.uniform(-0.15, 0.15)) * (columns / size - 0.5)
    else:
        center = size * float(rng.uniform(0.2, 0.8))
        half_width = size * float(rng.uniform(0.25, 0.6))
        reach = height * float(rng.uniform(0.2, 0.6))
        bowl = 1.0 - ((columns - center) / half_width) ** 2
        shore = reach * bowl + 0.08 * height * _line_noise(rng, size, 4, octaves=3)
    shore_row = horizon + shore
    scene.water_shore = shore_row
    lowest = int(min(np.ceil(shore_row.max()) + 1, size))
    if lowest <= horizon:
        return
    rows = scene.rows[horizon:lowest]
    mask = rows < shore_row
    near = (rows - horizon) / height
    ripples = _noise(rng, lowest - horizon, size, max(height // 2, 2), 5, octaves=2)
    offset = (ripples * (1.5 + 14.0 * near) * size / 256.0).astype(np.int32)
    source_rows = np.clip(2 * horizon - 1 - rows.astype(np.int32), 0, horizon - 1)
    source_columns = np.clip(np.arange(size, dtype=np.int32) + offset, 0, size - 1)
    reflection = scene.photo[source_rows, source_columns]
    deep = np.asarray((34, 62, 88), np.float32) * light.sun
    # Fresnel: grazing views near the horizon reflect more than the water under our feet.
    reflectance = (0.85 - 0.45 * np.sqrt(near))[..., None]
    color = deep + (reflection * 0.88 - deep) * reflectance
    color *= (1.0 + 0.07 * np.tanh(ripples))[..., None]
    if light.glow > 0.3:
        sun_column = light.sun_x * size
        path = np.exp(-(((scene.columns - sun_column) / (size * (0.03 + 0.1 * near))) ** 2))
        glints = np.clip(ripples - 0.6, 0.0, 1.0) * path
        color += (glints * 160.0)[..., None] * (light.sun / light.sun.max())
    scene.paint(horizon, 0, mask, WATER, color)

    if rng.random() < 0.55:
        width = size * float(rng.uniform(0.015, 0.06))
        sand_rows = scene.rows[horizon:size]
        beach = shore_row + width * (0.3 + 1.5 * (shore_row - horizon) / height)
        sand_mask = (sand_rows >= shore_row) & (sand_rows < beach)
        if sand_mask.any():
            near = (sand_rows - horizon) / height
            grain = scene.leaves[horizon:size]
            wet = np.clip(1.0 - (sand_rows - shore_row) / (0.4 * width + 1.0), 0, 1)
            albedo = np.asarray((214, 192, 146), np.float32)
            lit = np.clip(0.78 + 0.08 * grain - 0.3 * wet, 0.0, 1.0)
            sand = light.haze(light.shade(albedo, lit), 0.4 * (1 - near) ** 4)
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
    rows = scene.rows[start:size]
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
        mask &= scene.labels[start:size] != WATER
    grain = scene.leaves[start:size]
    if asphalt:
        albedo = np.asarray((88, 86, 90), np.float32)
    else:
        albedo = np.asarray((150, 124, 92), np.float32)
    lit = np.clip(0.8 + 0.08 * grain - 0.25 * across**4, 0.0, 1.0)
    color = light.shade(albedo, lit)
    if asphalt:
        # Dashes evenly spaced on the ground, so they crowd together toward the horizon.
        dashes = np.sin(7.0 / (along + 0.08)) > 0.1
        marking = (across < 0.05 + 0.04 * (1 - along)) & dashes
        color = np.where(marking[..., None], light.shade(np.float32(230), lit), color)
    color = light.haze(color, 0.5 * (1.0 - (rows - horizon) / (size - horizon)) ** 4)
    scene.paint(start, 0, mask, ROAD, color)


# -- objects standing on the ground --------------------------------------------------------


def _window(
    scene: _Scene, left: float, right: float, top: float, bottom: float
) -> tuple[int, int, np.ndarray, np.ndarray] | None:
    """Clip a box to the image; return its origin and the pixel row/column coordinates."""
    x0, x1 = max(int(np.floor(left)), 0), min(int(np.ceil(right)) + 1, scene.size)
    y0, y1 = max(int(np.floor(top)), 0), min(int(np.ceil(bottom)) + 1, scene.size)
    if x1 <= x0 or y1 <= y0:
        return None
    return y0, x0, scene.rows[y0:y1], scene.columns[:, x0:x1]


def _paint_conifer(scene: _Scene, column: float, base: float, scale: float) -> None:
    light, rng = scene.light, scene.rng
    height = scale * float(rng.uniform(0.3, 0.6))
    width = height * float(rng.uniform(0.3, 0.45))
    window = _window(scene, column - width, column + width, base - height, base)
    if window is None or height < 3:
        return
    top_row, left, rows, columns = window
    trunk_height = 0.12 * height
    crown_height = height - trunk_height
    position = (rows - (base - height)) / crown_height
    tiers = int(rng.integers(3, 6))
    within_tier = (position * tiers) % 1.0
    spread = 0.5 * width * position * (0.55 + 0.45 * within_tier)
    offset = columns - column
    crown = (position >= 0) & (position <= 1.0) & (np.abs(offset) <= spread)
    trunk = (
        (rows > base - trunk_height - 1)
        & (rows <= base)
        & (np.abs(offset) <= max(0.06 * width, 0.6))
    )
    mask = crown | trunk
    leaves = scene.leaves[top_row : top_row + rows.shape[0], left : left + columns.shape[1]]
    lit = np.clip(
        0.45 + 0.45 * light.side * offset / (0.5 * width) - 0.3 * within_tier + 0.2 * leaves,
        0.0,
        1.0,
    )
    albedo = np.asarray([(38, 72, 46), (44, 80, 42), (34, 64, 52)][rng.integers(3)], np.float32)
    color = light.shade(albedo, lit)
    color = np.where(
        crown[..., None], color, light.shade(np.asarray((80, 56, 40), np.float32), lit)
    )
    color = light.haze(color, 0.5 * (1.0 - scene.ground_fraction(base)) ** 3)
    scene.paint(top_row, left, mask, TREE, color)


def _paint_broadleaf(scene: _Scene, column: float, base: float, scale: float) -> None:
    light, rng = scene.light, scene.rng
    height = scale * float(rng.uniform(0.25, 0.5))
    radius = height * float(rng.uniform(0.28, 0.38))
    window = _window(scene, column - 1.5 * radius, column + 1.5 * radius, base - height, base)
    if window is None or radius < 1.5:
        return
    top_row, left, rows, columns = window
    center_row = base - height + radius
    leaves = scene.leaves[top_row : top_row + rows.shape[0], left : left + columns.shape[1]]
    crown = np.zeros((rows.shape[0], columns.shape[1]), bool)
    for _ in range(4):
        lobe_row = center_row + radius * float(rng.uniform(-0.3, 0.3))
        lobe_column = column + radius * float(rng.uniform(-0.55, 0.55))
        lobe_radius = radius * float(rng.uniform(0.55, 0.8))
        distance = ((rows - lobe_row) ** 2 + (columns - lobe_column) ** 2) / lobe_radius**2
        crown |= distance + 0.25 * leaves < 1.0
    trunk = (
        (rows > center_row) & (rows <= base) & (np.abs(columns - column) <= max(0.12 * radius, 0.6))
    )
    mask = crown | trunk
    # Light the crown as one ball facing a sun from the side and above.
    normal_x = np.clip((columns - column) / (1.2 * radius), -1, 1)
    normal_y = np.clip((rows - center_row) / (1.2 * radius), -1, 1)
    normal_z = np.sqrt(np.clip(1.0 - normal_x**2 - normal_y**2, 0.0, 1.0))
    facing = 0.62 * light.side * normal_x - 0.55 * normal_y + 0.56 * normal_z
    lit = np.clip(0.1 + 0.8 * facing + 0.3 * leaves, 0.0, 1.0)
    albedo = np.asarray(
        [(62, 104, 46), (80, 116, 50), (52, 92, 50), (128, 112, 46)][rng.integers(4)], np.float32
    )
    color = light.shade(albedo, lit)
    color = np.where(
        crown[..., None], color, light.shade(np.asarray((78, 58, 42), np.float32), lit)
    )
    color = light.haze(color, 0.5 * (1.0 - scene.ground_fraction(base)) ** 3)
    scene.paint(top_row, left, mask, TREE, color)


def _paint_rock(scene: _Scene, column: float, base: float, scale: float) -> None:
    light, rng = scene.light, scene.rng
    half_width = scale * float(rng.uniform(0.03, 0.09))
    half_height = half_width * float(rng.uniform(0.45, 0.8))
    center_row = base - 0.7 * half_height
    window = _window(
        scene, column - half_width, column + half_width, center_row - half_height, base
    )
    if window is None or half_width < 1.5:
        return
    top_row, left, rows, columns = window
    leaves = scene.leaves[top_row : top_row + rows.shape[0], left : left + columns.shape[1]]
    normal_x = (columns - column) / half_width
    normal_y = (rows - center_row) / half_height
    mask = (normal_x**2 + normal_y**2 + 0.3 * leaves < 1.0) & (rows <= base)
    normal_z = np.sqrt(np.clip(1.0 - normal_x**2 - normal_y**2, 0.0, 1.0))
    facing = 0.6 * light.side * normal_x - 0.6 * normal_y + 0.5 * normal_z
    # Quantized light gives flat, chiselled facets, as a painter would block in a stone.
    lit = np.clip(np.round((0.2 + 0.7 * facing + 0.25 * leaves) * 3.0) / 3.0, 0.0, 1.0)
    albedo = np.asarray(
        [(128, 124, 118), (110, 108, 106), (140, 128, 112)][rng.integers(3)], np.float32
    )
    color = light.haze(light.shade(albedo, lit), 0.45 * (1.0 - scene.ground_fraction(base)) ** 3)
    scene.paint(top_row, left, mask, ROCK, color)


def _paint_building(scene: _Scene, column: float, base: float, scale: float) -> None:
    """A gabled house seen from a corner: front wall, gable end, and the roof between them."""
    light, rng = scene.light, scene.rng
    front = scale * float(rng.uniform(0.25, 0.5))
    depth = front * float(rng.uniform(0.3, 0.6))
    wall = front * float(rng.uniform(0.35, 0.6))
    roof = depth * float(rng.uniform(0.45, 0.9))
    gable_right = rng.random() < 0.5
    left_edge = column - 0.5 * (front + depth)
    window = _window(scene, left_edge, left_edge + front + depth, base - wall - roof, base)
    if window is None or front < 4:
        return
    top_row, left, rows, columns = window
    eave = base - wall
    x = columns - left_edge
    if not gable_right:
        x = (front + depth) - x
    rise = np.clip((eave - rows) / roof, 0.0, None)
    front_wall = (x >= 0) & (x < front) & (rows > eave) & (rows <= base)
    end_wall = (x >= front) & (x < front + depth) & (rows > eave) & (rows <= base)
    gable = (
        (rows <= eave)
        & (rise <= 1.0)
        & (x >= front + 0.5 * depth * rise)
        & (x < front + depth - 0.5 * depth * rise)
    )
    roof_mask = (
        (rows <= eave)
        & (rise <= 1.0)
        & (x >= 0.5 * depth * rise)
        & (x < front + 0.5 * depth * rise)
    )
    mask = front_wall | end_wall | gable | roof_mask
    if not mask.any():
        return
    walls = np.asarray(
        [(228, 220, 200), (196, 90, 70), (170, 130, 90), (214, 200, 160), (180, 186, 190)][
            rng.integers(5)
        ],
        np.float32,
    )
    roofing = np.asarray(
        [(150, 62, 44), (70, 64, 66), (110, 72, 50), (60, 80, 100)][rng.integers(4)], np.float32
    )
    # Whichever face turns toward the sun is lit; the gable end faces the side it sits on.
    end_faces_sun = (light.side > 0) == gable_right
    front_lit, end_lit = (0.55, 0.95) if end_faces_sun else (0.9, 0.25)
    lit = np.where(front_wall, front_lit, end_lit).astype(np.float32)
    lit = np.where(roof_mask, 0.75 + 0.1 * np.sin(rows * (6.0 / max(roof / 6, 1.0))), lit)
    albedo = np.where(roof_mask[..., None], roofing, walls)
    color = light.shade(albedo, lit)
    if front > 10:
        panes = max(int(front / 9), 1)
        across = (x / front * panes) % 1.0
        height_in_wall = (rows - eave) / wall
        glass = front_wall & (np.abs(across - 0.5) < 0.18) & (np.abs(height_in_wall - 0.42) < 0.16)
        pane_color = (
            np.asarray((250, 200, 110), np.float32)
            if light.windows_lit
            else light.shade(np.asarray((60, 74, 92), np.float32), np.float32(0.6))
        )
        color = np.where(glass[..., None], pane_color, color)
    color = light.haze(color, 0.5 * (1.0 - scene.ground_fraction(base)) ** 3)
    scene.paint(top_row, left, mask, BUILDING, color)


def _place_objects(scene: _Scene) -> None:
    """Scatter trees, rocks and buildings on open ground and paint them far to near."""
    rng, size, horizon = scene.rng, scene.size, scene.horizon
    height = size - horizon
    if height < 4:
        return
    placed: list[tuple[float, float, int]] = []

    def try_place(column: float, row: float, kind: int, allowed: tuple[int, ...]) -> None:
        if not (0 <= column < size and horizon + 1 <= row < size):
            return
        if scene.labels[int(row), int(column)] in allowed:
            placed.append((float(row), float(column), kind))

    style = rng.random()
    if style < 0.3:
        tree_count = int(rng.integers(0, 5))
    elif style < 0.75:
        tree_count = int(rng.integers(5, 20))
    else:
        tree_count = int(rng.integers(20, 45))
    groves = [(size * float(rng.uniform(0, 1)), float(rng.uniform(0.05, 0.8))) for _ in range(3)]
    for _ in range(tree_count):
        grove_column, grove_depth = groves[rng.integers(len(groves))]
        depth = np.clip(grove_depth + float(rng.normal(0, 0.12)), 0.0, 1.0)
        column = grove_column + float(rng.normal(0, 0.18)) * size
        kind = 0 if rng.random() < 0.5 else 1
        try_place(column, horizon + 1 + depth**1.5 * (height - 2), kind, (GRASS,))
    for _ in range(int(rng.integers(0, 7))):
        column = size * float(rng.uniform(0, 1))
        try_place(
            column, horizon + 1 + float(rng.uniform(0.1, 1.0)) * (height - 2), 2, (GRASS, SAND)
        )
    if rng.random() < 0.45:
        for _ in range(int(rng.integers(1, 5))):
            column = size * float(rng.uniform(0.05, 0.95))
            try_place(
                column,
                horizon + 1 + float(rng.uniform(0.02, 0.5)) ** 1.3 * (height - 2),
                3,
                (GRASS,),
            )

    painters = (_paint_conifer, _paint_broadleaf, _paint_rock, _paint_building)
    for row, column, kind in sorted(placed):
        scale = max(row - horizon, 1.0) * size / height
        painters[kind](scene, column, row, scale)


def _finish(photo: np.ndarray) -> np.ndarray:
    """Quantize the painted float image to 8-bit RGB."""
    np.clip(photo, 0.0, 255.0, out=photo)
    return photo.astype(np.uint8)


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
        photo=np.empty((size, size, 3), np.float32),
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
    return scene.labels, _finish(scene.photo)


def _save_png_atomic(image: Image.Image, path: Path) -> None:
    """Write a PNG under a hidden temp name, then rename: a killed run leaves no half file."""
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            image.save(handle, format="PNG", **PNG_OPTIONS)
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def _split_counts(n: int, splits: tuple[float, float, float]) -> tuple[int, int, int]:
    train = max(round(n * splits[0]), 1)
    val = max(round(n * splits[1]), 1)
    # Every split keeps at least one image; take the excess from the larger of the two.
    while train + val > n - 1:
        if train >= val and train > 1:
            train -= 1
        else:
            val -= 1
    return train, val, n - train - val


def _palette_image(labels: np.ndarray, palette: list[int]) -> Image.Image:
    image = Image.fromarray(labels)
    image.putpalette(palette)
    return image


def write_synthetic_dataset(
    out: str | Path,
    n: int,
    size: int = 256,
    seed: int = 0,
    task: str = "labels",
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    progress: bool = False,
) -> dict:
    """Write ``n`` scenes under ``out`` split into train/val/test.

    ``task="labels"``: ``palette.json`` and ``<split>/A/<index>.png`` (mode P label map whose
    pixel values are class ids) with ``<split>/B/<index>.png`` (RGB photo). ``task="color"``:
    ``<split>/<index>.png`` RGB photos only. File names use the scene index, and scene ``i``
    is ``render_scene(scene_seed(seed, i), size)``, so files do not depend on ``n``.
    Returns a summary: counts per split, seconds, pairs_per_second.
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
    for name in SPLIT_NAMES:
        for folder in ("A", "B") if task == "labels" else ("",):
            (out / name / folder).mkdir(parents=True, exist_ok=True)
    palette = [channel for entry in LANDSCAPE_PALETTE for channel in entry.color]
    if task == "labels":
        entries = [
            {"id": entry.id, "name": entry.name, "color": list(entry.color)}
            for entry in LANDSCAPE_PALETTE
        ]
        write_text_atomic(out / "palette.json", json.dumps(entries, indent=2) + "\n")

    indices = range(n)
    if progress:
        from tqdm import tqdm

        indices = tqdm(indices, desc="synthesizing", unit="pair")
    started = time.perf_counter()
    for index in indices:
        labels, photo = render_scene(scene_seed(seed, index), size)
        split = out / assignments[index]
        name = f"{index:05d}.png"
        if task == "labels":
            _save_png_atomic(_palette_image(labels, palette), split / "A" / name)
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
