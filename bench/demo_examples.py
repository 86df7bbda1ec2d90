"""Paint the demo models' scenes, gather their examples, and list both in each model's spec.

Writes ``models/<model>/examples/`` (label maps as palette PNGs, photos as small grayscale
JPEGs) and ``examples/SOURCES.md``, sets the spec's ``extra.scenes`` and ``extra.examples``,
and prints a table of what it wrote. Facade label maps and photos come from the CMP Facades
test split and the colorizer's photos from Kodak24, both read from ``--datasets``; the
landscapes are painted here or made by the synthetic set (``pix2pix data synth``).

Usage: python bench/demo_examples.py [--datasets ../shared/datasets] [--models models]
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.example_inputs import example_inputs
from model.model_folders import EXAMPLES_DIR
from model.spec import GeneratorSpec
from training.data.synth import render_scene, scene_seed

SIZE = 256
PHOTO_QUALITY = 88
SYNTH_SEED = 29


# -- facade scenes: flat class regions, as a person paints them on the page --------------------


def windows(ids, classes, rows, columns, top, pitch, window, sill=True) -> None:
    """Rows of windows (``window`` = (height, width)) with a sill under each."""
    height, width = window
    left = (SIZE - (columns - 1) * pitch[1] - width) // 2
    for row in range(rows):
        y = top + row * pitch[0]
        for column in range(columns):
            x = left + column * pitch[1]
            ids[y : y + height, x : x + width] = classes["window"]
            if sill:
                ids[y + height : y + height + 4, x - 2 : x + width + 2] = classes["sill"]


def town_house(classes: dict[str, int]) -> np.ndarray:
    ids = np.full((SIZE, SIZE), classes["facade"], np.uint8)
    ids[:24] = classes["background"]
    ids[24:38] = classes["cornice"]
    windows(ids, classes, rows=4, columns=6, top=56, pitch=(40, 40), window=(26, 18))
    ids[212:218] = classes["molding"]
    ids[218:, 112:144] = classes["door"]
    for x in (20, 180):
        ids[226:, x : x + 56] = classes["shop"]
    return ids


def balconies(classes: dict[str, int]) -> np.ndarray:
    ids = np.full((SIZE, SIZE), classes["facade"], np.uint8)
    ids[:16] = classes["background"]
    ids[16:28] = classes["cornice"]
    for row in range(4):
        y = 44 + 44 * row
        for x in range(18, SIZE, 60):
            ids[y : y + 32, x - 6 : x + 30] = classes["blind"]
            ids[y : y + 32, x : x + 24] = classes["window"]
        if row in (1, 2):
            ids[y + 22 : y + 34, 8:248] = classes["balcony"]
        else:
            for x in range(18, SIZE, 60):
                ids[y + 32 : y + 36, x - 6 : x + 30] = classes["sill"]
    ids[216:222] = classes["molding"]
    ids[222:] = classes["shop"]
    ids[222:, 112:144] = classes["door"]
    return ids


def pillared(classes: dict[str, int]) -> np.ndarray:
    ids = np.full((SIZE, SIZE), classes["background"], np.uint8)
    ids[30:, 10:246] = classes["facade"]
    ids[30:44, 6:250] = classes["cornice"]
    for x in (10, 236):
        ids[44:, x : x + 10] = classes["pillar"]
    for row in range(3):
        y = 62 + 50 * row
        for x in range(30, 220, 42):
            ids[y - 8 : y - 2, x - 2 : x + 22] = classes["deco"]
    windows(ids, classes, rows=3, columns=5, top=62, pitch=(50, 42), window=(34, 20))
    ids[208:214, 10:246] = classes["molding"]
    ids[214:, 108:148] = classes["door"]
    return ids


# -- landscape scenes: the synthetic set's layers (jagged ridges, blobby clouds) ----------------


def _landscape(classes: dict[str, int], paint: Callable[[ImageDraw.ImageDraw], None]):
    image = Image.new("L", (SIZE, SIZE), classes["sky"])
    paint(ImageDraw.Draw(image))
    return np.asarray(image)


def _ridge_tops(seed: int, base: int, height: int) -> np.ndarray:
    """One ridge top per column, ``height`` pixels of relief above ``base``: midpoint
    displacement, so a few broad peaks carry jagged detail."""
    rng = np.random.default_rng(seed)
    points, spread = np.zeros(2), 1.0
    while len(points) <= SIZE:
        middles = (points[:-1] + points[1:]) / 2 + rng.normal(0, spread, len(points) - 1)
        merged = np.empty(2 * len(points) - 1)
        merged[0::2], merged[1::2] = points, middles
        points, spread = merged, spread * 0.6
    tops = np.interp(np.linspace(0, len(points) - 1, SIZE), np.arange(len(points)), points)
    tops = (tops - tops.min()) / max(float(np.ptp(tops)), 1e-6)
    return np.round(base - height * tops).astype(int)


def _ridge(draw, classes, seed: int, base: int, height: int, snow_depth: int) -> None:
    """A mountain ridge down to ``base``; snow on what rises within ``snow_depth`` of the top."""
    tops = _ridge_tops(seed, base, height)
    snowline = int(tops.min()) + snow_depth
    for x, top in enumerate(tops):
        draw.line([(x, top), (x, base)], fill=classes["mountain"])
        if top < snowline:
            draw.line([(x, top), (x, snowline - 1)], fill=classes["snow"])


def _cloud(draw, classes, x: int, y: int, width: int) -> None:
    for dx, dy, scale in ((0, 6, 1.0), (width // 4, 0, 0.7), (width // 2, 5, 0.8)):
        radius = int(width * scale / 3)
        draw.ellipse((x + dx, y + dy, x + dx + 2 * radius, y + dy + radius), classes["cloud"])


def _tree(draw, classes, x: int, base: int, height: int) -> None:
    spread = height // 3
    draw.polygon([(x - spread, base), (x, base - height), (x + spread, base)], classes["tree"])


def _bush(draw, classes, x: int, base: int, size: int) -> None:
    draw.ellipse((x - size, base - 2 * size, x + size, base), fill=classes["tree"])


def mountain_lake(classes: dict[str, int]) -> np.ndarray:
    def paint(draw: ImageDraw.ImageDraw) -> None:
        _cloud(draw, classes, 20, 14, 90)
        _cloud(draw, classes, 160, 30, 70)
        _ridge(draw, classes, seed=0, base=104, height=50, snow_depth=12)
        draw.rectangle((0, 100, SIZE, SIZE), fill=classes["grass"])
        draw.polygon([(0, 104), (SIZE, 104), (SIZE, 150), (140, 160), (0, 146)], classes["sand"])
        draw.polygon([(0, 104), (SIZE, 104), (SIZE, 143), (140, 152), (0, 139)], classes["water"])
        for x, height in ((22, 56), (48, 42), (222, 60), (244, 44)):
            _tree(draw, classes, x, 226, height)
        _bush(draw, classes, 180, 196, 14)
        draw.ellipse((112, 200, 140, 214), fill=classes["rock"])

    return _landscape(classes, paint)


def village_road(classes: dict[str, int]) -> np.ndarray:
    def paint(draw: ImageDraw.ImageDraw) -> None:
        _cloud(draw, classes, 70, 18, 100)
        _ridge(draw, classes, seed=11, base=100, height=34, snow_depth=8)
        draw.rectangle((0, 98, SIZE, SIZE), fill=classes["grass"])
        road = [(150, 98), (156, 98), (150, 150), (120, 200), (104, SIZE), (58, SIZE), (96, 190)]
        draw.polygon(road, fill=classes["road"])
        for left, top, width in ((70, 112, 30), (176, 120, 26)):
            draw.rectangle((left, top, left + width, top + 16), fill=classes["building"])
        for x, base, height in ((30, 170, 50), (210, 184, 44), (236, 196, 58)):
            _tree(draw, classes, x, base, height)
        for x, base, size in ((150, 130, 9), (46, 210, 12)):
            _bush(draw, classes, x, base, size)

    return _landscape(classes, paint)


def green_valley(classes: dict[str, int]) -> np.ndarray:
    def paint(draw: ImageDraw.ImageDraw) -> None:
        _cloud(draw, classes, 120, 12, 110)
        _ridge(draw, classes, seed=5, base=112, height=50, snow_depth=10)
        draw.rectangle((0, 110, SIZE, SIZE), fill=classes["grass"])
        for x, base, height in ((14, 190, 60), (40, 200, 50), (66, 186, 44), (200, 176, 40)):
            _tree(draw, classes, x, base, height)
        for x, base, size in ((100, 170, 12), (124, 176, 10), (226, 200, 16)):
            _bush(draw, classes, x, base, size)
        for box in ((150, 214, 190, 232), (70, 226, 96, 240)):
            draw.ellipse(box, fill=classes["rock"])

    return _landscape(classes, paint)


SCENES = {
    "facades": [
        ("Town house", "town-house.png", town_house),
        ("Balconies and blinds", "balconies.png", balconies),
        ("Pillared front", "pillared-front.png", pillared),
    ],
    "labels2photo": [
        ("Mountain lake", "mountain-lake.png", mountain_lake),
        ("Village road", "village-road.png", village_road),
        ("Green valley", "green-valley.png", green_valley),
    ],
}


# -- examples from real data and from the synthetic set -----------------------------------------


def palette_png(ids: np.ndarray, spec: GeneratorSpec) -> bytes:
    """A label map as a palette PNG whose colors are the spec's (index = class id)."""
    image = Image.fromarray(ids, "P")
    colors = [0] * 768
    for label in spec.palette:
        colors[3 * label.id : 3 * label.id + 3] = label.color
    image.putpalette(colors)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def facade_label_map(datasets: Path, number: int, spec: GeneratorSpec) -> bytes:
    """The right half of a CMP Facades test image, each pixel snapped to the nearest palette
    color and a 3x3 mode filter over the JPEG's ringing at class edges."""
    pair = np.asarray(Image.open(datasets / "facades" / "test" / f"{number}.jpg").convert("RGB"))
    colors = np.asarray([label.color for label in spec.palette], np.int32)
    label_half = pair[:, pair.shape[1] // 2 :].astype(np.int32)
    distances = ((label_half[:, :, None, :] - colors[None, None]) ** 2).sum(-1)
    ids = np.asarray([label.id for label in spec.palette], np.uint8)[distances.argmin(-1)]
    cleaned = Image.fromarray(ids, "L").filter(ImageFilter.ModeFilter(3))
    return palette_png(np.asarray(cleaned), spec)


def gray_photo(image: Image.Image) -> bytes:
    """A photo as a grayscale JPEG at most SIZE pixels a side."""
    image = image.convert("L")
    image.thumbnail((SIZE, SIZE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=PHOTO_QUALITY, optimize=True)
    return buffer.getvalue()


def kodak_photo(datasets: Path, number: int) -> bytes:
    return gray_photo(Image.open(datasets / "kodak24" / f"kodim{number:02d}.png"))


def facade_photo(datasets: Path, number: int) -> bytes:
    pair = Image.open(datasets / "facades" / "test" / f"{number}.jpg")
    return gray_photo(pair.crop((0, 0, pair.width // 2, pair.height)))


def synth_label_map(index: int, spec: GeneratorSpec) -> bytes:
    labels, _ = render_scene(scene_seed(SYNTH_SEED, index), SIZE)
    return palette_png(labels, spec)


PAINTED = "painted by bench/demo_examples.py; MIT, as this project"
CMP_TEST = (
    "CMP Facade Database test split, image {number}: {what} (R. Tyleček and R. Šára, "
    "GCPR 2013, in the pix2pix paper's layout); research use, cite the paper"
)
CMP_LABEL_MAP = "its label map (right half), snapped to the palette, 3x3 mode filter"
CMP_PHOTO = "its photo (left half) in grayscale"
KODAK = (
    "Kodak PhotoCD image kodim{number:02d} (the Kodak24 test set) in grayscale at 256 px; "
    "released by the Eastman Kodak Company for unrestricted usage"
)


def examples(datasets: Path) -> dict[str, list[tuple[str, str, Callable, str]]]:
    """Per model: (name, file, maker(spec) -> bytes, source and licence)."""
    facade = [
        ("Apartment block", 1),
        ("Balconies and deco", 40),
        ("Pillars and moldings", 60),
    ]
    synth = [("Lake and trees", 3), ("Houses in the trees", 10), ("Road to the lake", 5)]
    kodak = [
        (
            name,
            f"kodim{number:02d}.jpg",
            lambda spec, number=number: kodak_photo(datasets, number),
            KODAK.format(number=number),
        )
        for name, number in (("Lighthouse", 21), ("Parrots", 23))
    ]
    town_facade = (
        "Town facade",
        "cmp-test-1.jpg",
        lambda spec: facade_photo(datasets, 1),
        CMP_TEST.format(number=1, what=CMP_PHOTO),
    )
    return {
        "facades": [
            (
                name,
                f"cmp-test-{number}.png",
                lambda spec, number=number: facade_label_map(datasets, number, spec),
                CMP_TEST.format(number=number, what=CMP_LABEL_MAP),
            )
            for name, number in facade
        ],
        "labels2photo": [
            (
                name,
                f"synth-{index}.png",
                lambda spec, index=index: synth_label_map(index, spec),
                f"`pix2pix data synth --seed {SYNTH_SEED}`, scene {index}; MIT, as this project",
            )
            for name, index in synth
        ],
        "gray2color": [kodak[0], town_facade, kodak[1]],
    }


# -- writing ------------------------------------------------------------------------------------


def write_model(folder: Path, datasets: Path) -> list[tuple[str, str, str, int, int]]:
    """Write one model's scenes and examples and list them in its spec; returns table rows."""
    spec = GeneratorSpec.load(folder)
    target = folder / EXAMPLES_DIR
    target.mkdir(exist_ok=True)
    classes = {label.name: label.id for label in spec.palette}
    made = [
        ("scenes", name, file, lambda spec, paint=paint: palette_png(paint(classes), spec), PAINTED)
        for name, file, paint in SCENES.get(folder.name, [])
    ]
    made += [("examples", *entry) for entry in examples(datasets)[folder.name]]
    listing: dict[str, list[dict[str, str]]] = {"scenes": [], "examples": []}
    rows, sources = [], []
    for key, name, file, maker, source in made:
        data = maker(spec)
        (target / file).write_bytes(data)
        listing[key].append({"name": name, "file": f"{EXAMPLES_DIR}/{file}"})
        sources.append(f"- `{file}`: {source}")
        image = Image.open(io.BytesIO(data))
        classes_used = len(np.unique(np.asarray(image))) if image.mode == "P" else 0
        rows.append((folder.name, key, file, len(data), classes_used))
    extra = {key: value for key, value in spec.extra.items() if key not in listing}
    extra |= {key: value for key, value in listing.items() if value}
    spec = GeneratorSpec.from_dict(spec.to_dict() | {"extra": extra})
    example_inputs(folder, spec)  # every listed file is there
    spec.save(folder)
    (target / "SOURCES.md").write_text(
        f"# Examples of the {folder.name} demo model: sources and licences\n\n"
        + "\n".join(sources)
        + "\n",
        encoding="utf-8",
    )
    return rows


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=Path, default=root.parent / "shared" / "datasets")
    parser.add_argument("--models", type=Path, default=root / "models")
    arguments = parser.parse_args()
    rows = []
    for name in ("facades", "labels2photo", "gray2color"):
        rows += write_model(arguments.models / name, arguments.datasets)
    print(f"{'model':<14}{'list':<10}{'file':<24}{'bytes':>8}{'classes':>9}")
    for model, key, file, size, classes in rows:
        print(f"{model:<14}{key:<10}{file:<24}{size:>8}{classes or '':>9}")
    print(f"{'total':<48}{sum(row[3] for row in rows):>8}")


if __name__ == "__main__":
    main()
