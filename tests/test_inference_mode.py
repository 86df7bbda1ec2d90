"""Inference modes: batch norm at each image's own statistics (``sample``, what a generator
trained at batch size 1 saw in every step), through export, int8, training and serving."""

from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch

from model.checkpoint import load_generator, save_model_folder
from model.errors import CheckpointError, SpecError
from model.export import export_model
from model.networks import BatchNorm, UNetGenerator, init_weights, use_sample_statistics
from model.quantize import psnr
from model.runtime import load_model
from model.spec import GeneratorArchitecture, GeneratorSpec
from model.translate import Translator
from tests.conftest import tiny_config
from training.config import ConfigError


def _generator(spade: bool = False) -> UNetGenerator:
    """A 5-level generator whose running statistics differ from any one image's, as after
    training: inputs of another scale than the test images."""
    torch.manual_seed(0)
    generator = UNetGenerator(3, 3, num_downs=5, base_width=8, norm="batch", spade=spade)
    init_weights(generator, gain=0.1)
    generator.train()
    with torch.no_grad():
        for _ in range(5):
            generator(torch.rand(4, 3, 64, 64) * 0.5)
    return generator.eval()


def _images(count: int, height: int = 64, width: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, height // 8, width // 8, generator=generator) * 2 - 1
    return coarse.repeat_interleave(8, 2).repeat_interleave(8, 3)


@pytest.fixture(scope="module")
def sample_folder(tmp_path_factory):
    spec = GeneratorSpec(
        GeneratorArchitecture(num_downs=5, base_width=8, dropout=False),
        3,
        3,
        train_size=64,
        pad_multiple=32,
        inference_mode="sample",
    )
    folder = tmp_path_factory.mktemp("sample") / "model"
    generator = _generator()
    save_model_folder(folder, generator, spec)
    return folder


@pytest.mark.parametrize("spade", [False, True])
def test_sample_statistics_are_batch_norm_at_batch_one_and_never_mix_images(spade):
    generator = _generator(spade)
    buffers = {name: value.clone() for name, value in generator.named_buffers()}
    images = _images(3)
    # Batch norm in training mode, one image at a time: what training at batch 1 computes.
    reference = copy.deepcopy(generator)
    for layer in reference.modules():
        if isinstance(layer, torch.nn.Dropout):
            layer.p = 0.0
    with torch.no_grad():
        expected = torch.cat([reference.train()(image[None]) for image in images])
        running = generator(images)
        use_sample_statistics(generator, True)
        together = generator(images)
        alone = generator(images[:1])
    torch.testing.assert_close(together, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(alone, together[:1], rtol=0, atol=1e-6)
    assert (together - running).abs().mean() > 0.01  # the two modes differ on these weights
    for name, value in generator.named_buffers():  # the running statistics are left alone
        torch.testing.assert_close(value, buffers[name], rtol=0, atol=0)
    use_sample_statistics(generator, False)
    with torch.no_grad():
        torch.testing.assert_close(generator(images), running, rtol=0, atol=0)


def test_spec_and_cli_know_the_mode(sample_folder):
    generator, spec = load_generator(sample_folder)
    assert spec.inference_mode == "sample" and not generator.training
    norms = [layer for layer in generator.modules() if isinstance(layer, BatchNorm)]
    assert norms and all(layer.per_sample for layer in norms)
    with pytest.raises(SpecError, match="inference_mode"):
        GeneratorSpec(GeneratorArchitecture(), 3, 3, inference_mode="instance")


@pytest.mark.numeric
@pytest.mark.parametrize("fmt", ["safetensors", "onnx", "torchscript"])
def test_every_format_carries_sample_statistics(sample_folder, tmp_path, fmt):
    result = export_model(sample_folder, tmp_path / fmt, fmt)
    assert len(result.parity) == 2 and max(result.parity.values()) <= 1e-4
    runtime = {"safetensors": "torch", "onnx": "onnx", "torchscript": "torchscript"}[fmt]
    exported = load_model(tmp_path / fmt, runtime=runtime)
    assert exported.spec.inference_mode == "sample"
    if fmt == "onnx":
        graph = onnx.load(str(tmp_path / fmt / "generator.onnx")).graph
        assert any(node.op_type == "InstanceNormalization" for node in graph.node)
    reference = load_model(sample_folder, runtime="torch").runtime
    batch = _images(2, 96, 64, seed=3).numpy()
    np.testing.assert_allclose(exported.runtime(batch), reference(batch), atol=1e-4)
    # Another image beside it changes nothing: no statistics are shared across a batch.
    np.testing.assert_allclose(exported.runtime(batch[:1]), exported.runtime(batch)[:1], atol=1e-5)


def test_export_switches_a_model_to_sample_statistics(tmp_path):
    spec = GeneratorSpec(
        GeneratorArchitecture(num_downs=5, base_width=8), 3, 3, train_size=64, pad_multiple=32
    )
    save_model_folder(tmp_path / "eval", _generator(), spec)
    result = export_model(tmp_path / "eval", tmp_path / "onnx", "onnx", inference_mode="sample")
    assert max(result.parity.values()) <= 1e-4
    batch = _images(1, seed=5).numpy()
    served = load_model(result.folder, runtime="onnx").runtime(batch)
    running = load_model(tmp_path / "eval", runtime="torch").runtime(batch)
    assert np.abs(served - running).mean() > 0.01  # it is not the eval-mode model


@pytest.mark.numeric
def test_int8_export_keeps_sample_statistics_in_float(sample_folder, tmp_path):
    calibration = _images(12, seed=1).numpy()
    result = export_model(
        sample_folder, tmp_path / "int8", "onnx", int8=True, calibration=calibration
    )
    graph = onnx.load(str(tmp_path / "int8" / "generator.onnx")).graph
    assert any(node.op_type == "InstanceNormalization" for node in graph.node)
    reference = load_model(sample_folder, runtime="torch").runtime
    loaded = load_model(result.folder, runtime="onnx")
    assert loaded.runtime.name == "onnx-int8"
    batch = _images(3, 96, 64, seed=7).numpy()
    assert psnr(reference(batch), loaded.runtime(batch)) >= 35.0


def test_onnx_refuses_test_time_dropout_and_names_the_way_out(sample_folder, tmp_path):
    with pytest.raises(CheckpointError, match="inference-mode sample"):
        export_model(sample_folder, tmp_path / "x", "onnx", inference_mode="train")
    assert not (tmp_path / "x").exists()


def test_train_mode_inference_keeps_images_apart_and_running_statistics(tmp_path):
    """The paper's test time (dropout and each image's statistics) on a batch of crops."""
    spec = GeneratorSpec(
        GeneratorArchitecture(num_downs=5, base_width=8),
        3,
        3,
        train_size=64,
        pad_multiple=32,
        inference_mode="train",
    )
    save_model_folder(tmp_path / "m", _generator(), spec)
    loaded = load_model(tmp_path / "m", runtime="torch")
    generator = loaded.runtime.generator
    assert generator.training  # dropout on
    buffers = {name: value.clone() for name, value in generator.named_buffers()}
    loaded.runtime(_images(4, seed=2).numpy())
    for name, value in generator.named_buffers():
        torch.testing.assert_close(value, buffers[name], rtol=0, atol=0)


def test_a_run_validates_and_serves_with_sample_statistics(synth_labels, tmp_path, caplog):
    from training.loop.trainer import Trainer

    overrides = {"generator.inference_mode": "sample", "train.max_steps": "4"}
    config = tiny_config(synth_labels, tmp_path, **overrides)
    with caplog.at_level("WARNING", logger="training.loop.trainer"):
        trainer = Trainer(config, progress=False)
    # The tiny config trains at batch 2: per-batch statistics in training, per image at inference.
    assert "train.batch_size = 2" in caplog.text
    trainer.train()
    trainer.validate(save_grid=False)
    # Validation switched the servable copy to per-sample statistics and back: training goes on
    # with batch norm as it was.
    for module in (trainer.generator, trainer.servable_generator):
        norms = [layer for layer in module.modules() if isinstance(layer, BatchNorm)]
        assert norms and not any(layer.per_sample for layer in norms)
    translator = Translator.load(config.run_dir, runtime="torch", batch_size=4)
    assert translator.spec.inference_mode == "sample"
    rng = np.random.default_rng(0)
    inputs = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    together = translator.translate_arrays(inputs)
    alone = translator.translate_arrays(inputs[:1])
    assert np.abs(together[0].astype(int) - alone[0].astype(int)).max() <= 1


def test_sync_batchnorm_with_per_sample_inference_is_refused(synth_labels, tmp_path):
    overrides = {"generator.inference_mode": "sample", "train.sync_batchnorm": "true"}
    with pytest.raises(ConfigError, match="sync_batchnorm.*inference_mode"):
        tiny_config(synth_labels, tmp_path, **overrides)
    # With another norm there are no batch statistics to disagree about.
    tiny_config(synth_labels, tmp_path, **overrides, **{"generator.norm": "instance"})


def test_a_model_runs_in_another_mode_than_its_spec_only_from_its_weights(sample_folder, tmp_path):
    batch = _images(2, seed=4).numpy()
    as_eval = load_model(sample_folder, inference_mode="eval")
    assert as_eval.spec.inference_mode == "eval" and as_eval.runtime.name == "torch"
    eval_folder = tmp_path / "eval"
    export_model(sample_folder, eval_folder, "safetensors", inference_mode="eval")
    expected = load_model(eval_folder, runtime="torch").runtime(batch)
    np.testing.assert_allclose(as_eval.runtime(batch), expected, atol=1e-6)
    onnx_only = export_model(sample_folder, tmp_path / "onnx", "onnx").folder
    for runtime in ("auto", "onnx"):
        with pytest.raises(CheckpointError, match="needs the generator's weights"):
            load_model(onnx_only, runtime=runtime, inference_mode="eval")
    # The mode it was exported with needs no weights.
    assert load_model(onnx_only, inference_mode="sample").runtime.name == "onnx"
