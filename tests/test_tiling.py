"""Tiled inference: large images in overlapping, smoothly blended tiles."""

import itertools

import numpy as np
import torch
from PIL import Image

from model.networks import UNetGenerator, init_weights
from model.processing import pad_to_multiple
from model.tiling import blend_window, plan_tiles, tile_starts, translate_tiled
from model.translate import Translator


def generator(norm="batch"):
    torch.manual_seed(0)
    network = UNetGenerator(3, 3, num_downs=5, base_width=8, norm=norm)
    init_weights(network)
    return network.eval()


def test_tiles_cover_every_pixel_with_the_requested_overlap():
    assert tile_starts(100, 128, 16) == [0]
    starts = tile_starts(1000, 256, 64)
    assert starts[0] == 0 and starts[-1] == 1000 - 256
    assert all(b - a <= 256 - 64 for a, b in itertools.pairwise(starts))


def test_blend_weights_ramp_only_on_inner_edges():
    window = blend_window(8, 3, at_start=True, at_end=False)
    assert window[:5].tolist() == [1.0] * 5
    assert window[-3:].tolist() == [0.75, 0.5, 0.25]


def numpy_runner(network):
    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return network(torch.from_numpy(batch)).numpy()

    return run


def test_tiled_result_matches_untiled_within_tolerance():
    network = generator()
    image = np.random.default_rng(0).uniform(-1, 1, (1, 3, 700, 900)).astype(np.float32)
    padded, _ = pad_to_multiple(image, 32)
    whole = numpy_runner(network)(padded)[..., :700, :900]
    tiled = translate_tiled(numpy_runner(network), image, tile=256, overlap=64, multiple=32)
    assert tiled.shape == whole.shape
    difference = np.abs(tiled - whole)
    assert difference.mean() < 1e-3 and difference.max() < 0.02


def test_tiles_are_run_in_bounded_batches():
    network = generator()
    seen = []

    def run(batch):
        seen.append(batch.shape[0])
        return numpy_runner(network)(batch)

    image = np.zeros((1, 3, 600, 600), dtype=np.float32)
    translate_tiled(run, image, tile=128, overlap=32, multiple=32, batch_size=3)
    assert max(seen) <= 3 and sum(seen) == len(plan_tiles(image, 128, 32, 32).boxes)


def test_translator_tiles_large_images_and_keeps_their_size(tmp_path):
    from model.spec import GeneratorArchitecture, GeneratorSpec

    spec = GeneratorSpec(GeneratorArchitecture(num_downs=5, base_width=8), 3, 3, pad_multiple=32)
    translator = Translator(numpy_runner(generator()), spec, tile_size=128, tile_overlap=32)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (301, 457, 3), np.uint8))
    assert translator.translate(image).size == (457, 301)
