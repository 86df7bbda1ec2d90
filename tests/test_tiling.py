"""The translation plan: padding, fitting, and large images in overlapping, blended tiles."""

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from model.networks import UNetGenerator, init_weights
from model.plan import blend_window, plan_translation, run_plans, tile_starts
from model.processing import pad_to_multiple
from model.spec import GeneratorArchitecture, GeneratorSpec
from model.translate import Translator

SPEC = GeneratorSpec(GeneratorArchitecture(num_downs=5, base_width=8), 3, 3, pad_multiple=32)


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


@pytest.mark.numeric
def test_tiled_result_matches_untiled_within_tolerance():
    network = generator()
    image = np.random.default_rng(0).uniform(-1, 1, (1, 3, 700, 900)).astype(np.float32)
    padded, _ = pad_to_multiple(image, 32)
    whole = numpy_runner(network)(padded)[..., :700, :900]
    plan = plan_translation(image[0], SPEC, tile_size=256, tile_overlap=64)
    run_plans([plan], numpy_runner(network))
    tiled = plan.result()[None]
    assert len(plan.boxes) == 20 and tiled.shape == whole.shape
    difference = np.abs(tiled - whole)
    assert difference.mean() < 1e-3 and difference.max() < 0.02


def test_tiles_are_run_in_bounded_batches():
    network = generator()
    seen = []

    def run(batch):
        seen.append(batch.shape[0])
        return numpy_runner(network)(batch)

    plan = plan_translation(np.zeros((3, 600, 600), np.float32), SPEC, "pad", 128, 32)
    run_plans([plan], run, batch_size=3)
    assert max(seen) <= 3 and sum(seen) == len(plan.boxes) > 3


def test_small_inputs_run_whole_and_equal_sizes_share_a_batch():
    network = generator()
    seen = []

    def run(batch):
        seen.append(batch.shape)
        return numpy_runner(network)(batch)

    images = np.random.default_rng(1).uniform(-1, 1, (3, 3, 37, 53)).astype(np.float32)
    plans = [plan_translation(image, SPEC) for image in images]
    run_plans(plans, run, batch_size=8)
    assert seen == [(3, 3, 64, 64)]  # one batch of the three images, padded to the multiple
    padded, _ = pad_to_multiple(images, 32)
    whole = numpy_runner(network)(padded)[..., :37, :53]
    assert np.array_equal(np.stack([plan.result() for plan in plans]), whole)


def test_fit_runs_at_the_training_size_and_returns_the_input_size():
    spec = GeneratorSpec(SPEC.architecture, 3, 3, pad_multiple=32, train_size=64)
    seen = []

    def run(batch):
        seen.append(batch.shape)
        return numpy_runner(generator())(batch)

    plan = plan_translation(np.zeros((3, 90, 40), np.float32), spec, "fit", 32, 0)
    run_plans([plan], run)
    assert seen == [(4, 3, 32, 32)]  # the fitted 64 px input, tiled like any other
    assert plan.result().shape == (3, 90, 40)


def test_translator_tiles_large_images_and_keeps_their_size(tmp_path):
    translator = Translator(numpy_runner(generator()), SPEC, tile_size=128, tile_overlap=32)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (301, 457, 3), np.uint8))
    assert translator.translate(image).size == (457, 301)
