"""The resize decoder (``generator.upsample = "resize"``): nearest 2x + 3x3 convolutions in place
of transposed ones, through the network, the spec, checkpoints, the training fast paths,
training and serving. Export and int8 are in test_export.py and test_quantize.py."""

import io

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from model import fast_paths
from model.checkpoint import load_generator, save_model_folder
from model.errors import CheckpointError, SpecError
from model.export import export_model
from model.networks import ResizeConv, UNetGenerator, init_weights
from model.spec import GeneratorArchitecture, GeneratorSpec
from tests.conftest import tiny_config, write_label_dataset
from training.loop.trainer import Trainer


def upsampling_layers(generator: UNetGenerator) -> list[torch.nn.Module]:
    return [block.conv for block in generator.decoder] + [generator.output[1]]


def test_resize_decoder_keeps_the_transposed_decoders_channel_counts():
    transposed = UNetGenerator(3, 3, num_downs=6, base_width=4, upsample="transpose")
    resized = UNetGenerator(3, 3, num_downs=6, base_width=4, upsample="resize")
    pairs = [(layer.in_channels, layer.out_channels) for layer in upsampling_layers(transposed)]
    assert all(isinstance(layer, ResizeConv) for layer in upsampling_layers(resized))
    assert [(r.conv.in_channels, r.conv.out_channels) for r in upsampling_layers(resized)] == pairs
    assert all(r.conv.kernel_size == (3, 3) for r in upsampling_layers(resized))
    assert not any(isinstance(m, torch.nn.ConvTranspose2d) for m in resized.modules())
    output = resized(torch.randn(2, 3, 64, 128))
    assert output.shape == (2, 3, 64, 128) and output.abs().max() <= 1.0


def test_a_flat_map_stays_flat_through_a_resize_conv_and_not_a_transposed_one():
    torch.manual_seed(0)
    resize = ResizeConv(4, 4, bias=False)
    transposed = torch.nn.ConvTranspose2d(4, 4, kernel_size=4, stride=2, padding=1, bias=False)
    flat = torch.ones(1, 4, 8, 8)
    with torch.no_grad():
        # Away from the zero padding at the border.
        resized, grid = resize(flat)[..., 2:-2, 2:-2], transposed(flat)[..., 2:-2, 2:-2]
    spread = resized.amax(dim=(2, 3)) - resized.amin(dim=(2, 3))
    assert spread.max() <= 1e-6
    # The transposed conv paints a 2-pixel grid: each of the four phases is flat on its own,
    # at its own level.
    assert (grid.amax(dim=(2, 3)) - grid.amin(dim=(2, 3))).min() > 1e-2
    for row in (0, 1):
        for column in (0, 1):
            phase = grid[..., row::2, column::2]
            assert (phase.amax(dim=(2, 3)) - phase.amin(dim=(2, 3))).max() <= 1e-6


def test_spec_without_upsample_means_transpose_and_resize_round_trips(tmp_path):
    transposed = GeneratorSpec(GeneratorArchitecture(num_downs=5), 3, 3, pad_multiple=32)
    written = transposed.to_dict()
    assert "upsample" not in written["architecture"]  # as before the option: old readers agree
    assert GeneratorSpec.from_dict(written).architecture.upsample == "transpose"

    resized = GeneratorSpec(
        GeneratorArchitecture(num_downs=5, upsample="resize"), 3, 3, pad_multiple=32
    )
    resized.save(tmp_path)
    assert '"upsample": "resize"' in (tmp_path / "spec.json").read_text()
    assert GeneratorSpec.load(tmp_path) == resized
    with pytest.raises(SpecError, match="upsample must be one of"):
        GeneratorArchitecture(upsample="bilinear")


def test_resize_generator_round_trips_through_a_model_folder(tmp_path):
    torch.manual_seed(0)
    generator = UNetGenerator(3, 3, num_downs=5, base_width=8, upsample="resize")
    init_weights(generator, gain=0.1)
    architecture = GeneratorArchitecture(num_downs=5, base_width=8, upsample="resize")
    spec = GeneratorSpec(architecture, 3, 3, pad_multiple=32)
    save_model_folder(tmp_path / "model", generator.eval(), spec)

    loaded, loaded_spec = load_generator(tmp_path / "model")
    assert loaded_spec.architecture.upsample == "resize"
    assert all(isinstance(layer, ResizeConv) for layer in upsampling_layers(loaded))
    x = torch.rand(2, 3, 32, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), generator(x))

    # The same weights under a spec that says transposed convs: refused, and the message
    # says what does not match.
    (tmp_path / "model" / "spec.json").write_text(
        GeneratorSpec(GeneratorArchitecture(num_downs=5, base_width=8), 3, 3).to_json()
    )
    with pytest.raises(CheckpointError, match="weights do not match spec.json"):
        load_generator(tmp_path / "model")


def _outputs_and_gradients(generator, x, monkeypatch, enabled):
    monkeypatch.setattr(fast_paths, "MATMUL_MAX_PIXELS", 64 if enabled else 0)
    monkeypatch.setattr(fast_paths, "MATMUL_MAX_ROWS", 256 if enabled else 0)
    generator.zero_grad(set_to_none=True)
    y = generator(x)
    (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
    return y.detach(), {name: p.grad.clone() for name, p in generator.named_parameters()}


@pytest.mark.numeric
@pytest.mark.parametrize("channels_last", [False, True])
def test_resize_decoder_trains_through_the_fast_paths_like_stock_layers(monkeypatch, channels_last):
    """The GEMM fast paths know 4x4 stride-2 layers only: a resize decoder's 3x3 convs run
    stock, while its encoder keeps the strided GEMM, and gradients are the stock ones."""
    torch.manual_seed(0)
    generator = UNetGenerator(
        3, 2, num_downs=6, base_width=4, norm="batch", dropout=False, upsample="resize"
    )
    generator = generator.double().train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    if channels_last:
        generator = generator.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    folds, pads = [], []

    def counting(function, calls):
        def wrapper(*args, **kwargs):
            calls.append(1)
            return function(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(fast_paths.functional, "fold", counting(fast_paths.functional.fold, folds))
    monkeypatch.setattr(fast_paths.functional, "pad", counting(fast_paths.functional.pad, pads))
    stock_y, stock_grads = _outputs_and_gradients(generator, x, monkeypatch, False)
    assert not folds and not pads
    fast_y, fast_grads = _outputs_and_gradients(generator, x, monkeypatch, True)
    assert not folds  # no transposed conv left for the GEMM form
    assert len(pads) == 4  # the encoder levels with 8x8, 4x4, 2x2 and 1x1 outputs
    torch.testing.assert_close(fast_y, stock_y, rtol=0, atol=1e-12)
    for name, grad in stock_grads.items():
        largest = grad.abs().max().item()
        torch.testing.assert_close(fast_grads[name], grad, rtol=0, atol=1e-12 * largest, msg=name)


@pytest.mark.numeric
def test_a_resize_run_learns_and_serves(tmp_path):
    root = write_label_dataset(tmp_path / "data", counts=(16, 4, 4))
    overrides = {"data.input_kind": "label_map", "generator.upsample": "resize"}
    config = tiny_config(root, tmp_path, **overrides, **{"train.max_steps": "100"})
    trainer = Trainer(config, progress=False)
    initial = trainer.validate(save_grid=False)["val_l1"]
    summary = trainer.train()
    assert summary["val_l1"] <= 0.5 * initial, (initial, summary["val_l1"])

    from app.main import create_app
    from app.settings import Settings

    export_model(config.run_dir, tmp_path / "models" / "labels", "safetensors")
    with TestClient(create_app(Settings(models_dir=str(tmp_path / "models")))) as client:
        label_map = Image.open(next((root / "test" / "A").iterdir())).convert("RGB")
        label_map = label_map.crop((0, 0, 37, 29))  # not a multiple of 32: padded and cropped
        buffer = io.BytesIO()
        label_map.save(buffer, "PNG")
        response = client.post(
            "/v1/models/labels/translate", files={"image": ("a.png", buffer.getvalue())}
        )
    assert response.status_code == 200, response.text
    served = np.asarray(Image.open(io.BytesIO(response.content)))
    assert served.shape == (29, 37, 3) and served.std() > 0
