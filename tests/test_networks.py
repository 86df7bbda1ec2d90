"""The U-Net generator and the discriminators: sizes, shapes, init, receptive fields, building
a discriminator by name, and the training fast paths they ask for (model/fast_paths.py) against
the stock operators."""

import pytest
import torch

from model import fast_paths
from model.networks import (
    MultiScaleDiscriminator,
    PatchDiscriminator,
    SemanticDiscriminator,
    UNetGenerator,
    build_discriminator,
    count_parameters,
    init_weights,
)


def test_paper_generator_has_reference_parameter_count():
    assert count_parameters(UNetGenerator(3, 3, num_downs=8, base_width=64, norm="batch")) == (
        54_413_955
    )


def test_paper_discriminator_has_reference_parameter_count():
    assert count_parameters(PatchDiscriminator(6, base_width=64, n_layers=3, norm="batch")) == (
        2_768_705
    )


@pytest.mark.parametrize("num_downs,size", [(5, 32), (7, 128), (3, 24)])
@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_generator_keeps_size_and_range(num_downs, size, norm):
    generator = UNetGenerator(4, 2, num_downs=num_downs, base_width=4, norm=norm)
    output = generator(torch.randn(2, 4, size, size))
    assert output.shape == (2, 2, size, size)
    assert output.abs().max() <= 1.0


def test_generator_has_dropout_in_three_innermost_decoder_blocks_only():
    generator = UNetGenerator(num_downs=8, base_width=4, dropout=True)
    with_dropout = [isinstance(b.dropout, torch.nn.Dropout) for b in generator.decoder]
    assert with_dropout == [True, True, True, False, False, False, False]
    assert not any(
        isinstance(m, torch.nn.Dropout)
        for m in UNetGenerator(num_downs=8, base_width=4, dropout=False).modules()
    )


def test_first_encoder_layer_has_no_norm_and_no_activation():
    generator = UNetGenerator(num_downs=4, base_width=4, norm="batch")
    first = generator.encoder[0]
    assert isinstance(first.norm, torch.nn.Identity)
    assert isinstance(first.activation, torch.nn.Identity)
    assert isinstance(generator.encoder[1].norm, torch.nn.BatchNorm2d)


@pytest.mark.parametrize("n_layers,patches", [(0, 256), (1, 126), (3, 30), (5, 6)])
def test_patch_discriminator_output_grid(n_layers, patches):
    discriminator = PatchDiscriminator(6, base_width=4, n_layers=n_layers)
    logits = discriminator(torch.randn(1, 3, 256, 256), torch.randn(1, 3, 256, 256))
    assert logits.shape == (1, 1, patches, patches)


def receptive_field(discriminator: PatchDiscriminator, size: int = 96) -> int:
    """Width of the input region that influences the centre output patch (by gradients)."""
    condition = torch.randn(1, 3, size, size, requires_grad=True)
    discriminator.eval()
    logits = discriminator(condition, torch.randn(1, 3, size, size))
    centre = logits.shape[-1] // 2
    logits[0, 0, centre, centre].backward()
    touched = condition.grad.abs().sum(dim=(0, 1, 2)).nonzero()
    return int(touched.max() - touched.min() + 1)


@pytest.mark.parametrize("n_layers,field", [(0, 1), (1, 16), (3, 70)])
def test_patch_discriminator_receptive_fields(n_layers, field):
    discriminator = PatchDiscriminator(6, base_width=4, n_layers=n_layers, norm="none")
    init_weights(discriminator)
    assert receptive_field(discriminator, size=160) == field


def test_init_follows_the_paper():
    torch.manual_seed(0)
    generator = UNetGenerator(num_downs=6, base_width=32, norm="batch")
    init_weights(generator)
    conv = generator.encoder[3].conv.weight
    norm = generator.encoder[3].norm.weight
    assert abs(conv.mean().item()) < 1e-3
    assert conv.std().item() == pytest.approx(0.02, rel=0.05)
    assert norm.mean().item() == pytest.approx(1.0, abs=0.01)
    assert norm.std().item() == pytest.approx(0.02, rel=0.3)


def _outputs_and_gradients(generator, x, monkeypatch, enabled):
    monkeypatch.setattr(fast_paths, "MATMUL_MAX_PIXELS", 64 if enabled else 0)
    monkeypatch.setattr(fast_paths, "MATMUL_MAX_ROWS", 256 if enabled else 0)
    generator.zero_grad(set_to_none=True)
    y = generator(x)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    (y * weights).sum().backward()
    return y.detach(), {name: p.grad.clone() for name, p in generator.named_parameters()}


@pytest.mark.numeric
@pytest.mark.parametrize("channels_last", [False, True])
def test_matmul_path_for_small_maps_matches_stock_convolutions(monkeypatch, channels_last):
    """Training runs the 8x8-and-smaller levels as unfold/fold + GEMM: same outputs and
    gradients as nn.Conv2d / nn.ConvTranspose2d, in either memory layout."""
    torch.manual_seed(0)
    generator = UNetGenerator(3, 2, num_downs=6, base_width=4, norm="batch", dropout=False)
    generator = generator.double().train()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    if channels_last:
        generator = generator.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    folds, pads = [], []
    monkeypatch.setattr(fast_paths.functional, "fold", _counting(fast_paths.functional.fold, folds))
    monkeypatch.setattr(fast_paths.functional, "pad", _counting(fast_paths.functional.pad, pads))
    stock_y, stock_grads = _outputs_and_gradients(generator, x, monkeypatch, False)
    assert not folds and not pads
    fast_y, fast_grads = _outputs_and_gradients(generator, x, monkeypatch, True)
    assert len(folds) == 4  # the decoder levels fed 1x1, 2x2, 4x4 and 8x8 maps
    assert len(pads) == 4  # the encoder levels with 8x8, 4x4, 2x2 and 1x1 outputs
    # float64 and sums of at most a few thousand terms: the two summation orders differ by
    # about n * 1.1e-16 of a tensor's largest entry (measured: up to 5e-15), while a wrong index
    # or layout would be off by order one.
    torch.testing.assert_close(fast_y, stock_y, rtol=0, atol=1e-12)  # |y| <= 1 (tanh)
    for name, grad in stock_grads.items():
        largest = grad.abs().max().item()
        torch.testing.assert_close(fast_grads[name], grad, rtol=0, atol=1e-12 * largest, msg=name)
        if channels_last and grad.dim() == 4:
            # the gradient comes back in the weight's own layout: no copy for AccumulateGrad
            assert fast_grads[name].stride() == dict(generator.named_parameters())[name].stride()


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
def test_matmul_path_is_training_only(monkeypatch):
    generator = UNetGenerator(3, 3, num_downs=5, base_width=4)
    calls = []
    monkeypatch.setattr(fast_paths.functional, "fold", _counting(fast_paths.functional.fold, calls))
    with torch.no_grad():
        generator.train()(torch.randn(1, 3, 32, 32))
    generator.eval()(torch.randn(1, 3, 32, 32))
    traced = torch.jit.trace(generator.train(), torch.randn(1, 3, 32, 32), check_trace=False)
    assert not calls
    assert "fold" not in str(traced.inlined_graph)


def _counting(function, calls):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("batch", [1, 2])
def test_channels_last_decoder_stays_channels_last_while_training(batch):
    """Every decoder input (skip concatenated with the level below) keeps the model's
    channels-last layout, also at batch 1, where a size-1 batch dimension's stride is free
    and ``torch.cat`` used to fall back to NCHW for the whole decoder."""
    generator = UNetGenerator(3, 3, num_downs=5, base_width=4).train()
    generator = generator.to(memory_format=torch.channels_last)
    layouts = []

    def record(module, inputs):
        x = inputs[0]
        layouts.append((tuple(x.shape), x.stride()))

    for block in [*generator.decoder[1:], generator.output[1]]:
        block.register_forward_pre_hook(record)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    generator(x.requires_grad_()).sum().backward()
    assert len(layouts) == 4
    for shape, stride in layouts:
        expected = torch.empty(shape).contiguous(memory_format=torch.channels_last).stride()
        assert stride == expected, shape


def test_fast_paths_leave_other_convolution_shapes_to_the_layer(monkeypatch):
    """Only the U-Net's 4x4 stride-2 padding-1 shape has a GEMM form; any other layer handed
    to ``convolution`` runs as itself, with the same result bit for bit."""
    calls = []
    monkeypatch.setattr(fast_paths.functional, "fold", _counting(fast_paths.functional.fold, calls))
    monkeypatch.setattr(fast_paths.functional, "pad", _counting(fast_paths.functional.pad, calls))
    x = torch.randn(1, 4, 8, 8)
    layers = [
        torch.nn.Conv2d(4, 4, kernel_size=3, stride=2, padding=1),
        torch.nn.Conv2d(4, 4, kernel_size=4, stride=2, padding=1, groups=2),
        torch.nn.ConvTranspose2d(4, 4, kernel_size=4, stride=2, padding=1, output_padding=1),
    ]
    for layer in layers:
        layer.train()
        torch.testing.assert_close(fast_paths.convolution(layer, x), layer(x), rtol=0, atol=0)
    assert not calls


def test_build_discriminator_makes_the_semantic_discriminator_by_name():
    torch.manual_seed(0)
    built = build_discriminator(
        in_channels=3, kind="semantic", num_classes=5, base_width=4, levels=2
    )
    torch.manual_seed(0)
    direct = SemanticDiscriminator(3, num_classes=5, base_width=4, levels=2)
    assert isinstance(built, SemanticDiscriminator)
    assert built.state_dict().keys() == direct.state_dict().keys()
    for name, tensor in direct.state_dict().items():
        assert torch.equal(built.state_dict()[name], tensor), name
    assert built(torch.randn(2, 3, 16, 16)).shape == (2, 6, 16, 16)


def test_build_discriminator_makes_a_patchgan_by_default():
    assert isinstance(build_discriminator(in_channels=6, base_width=4), PatchDiscriminator)
    assert isinstance(
        build_discriminator(in_channels=6, kind="patch", base_width=4, num_scales=2),
        MultiScaleDiscriminator,
    )


def test_unknown_discriminator_kind_names_the_known_kinds():
    with pytest.raises(
        ValueError, match=r"unknown discriminator kind 'style'.*'patch', 'semantic'"
    ):
        build_discriminator(in_channels=6, kind="style")


def test_discriminator_options_must_belong_to_their_kind():
    with pytest.raises(ValueError, match="'semantic' discriminator does not take n_layers, norm"):
        build_discriminator(in_channels=3, kind="semantic", num_classes=5, n_layers=3, norm="batch")
    with pytest.raises(ValueError, match="'semantic' discriminator needs num_classes"):
        build_discriminator(in_channels=3, kind="semantic")
    with pytest.raises(ValueError, match="'patch' discriminator does not take levels"):
        build_discriminator(in_channels=6, levels=2)
