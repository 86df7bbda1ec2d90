"""The pix2pix networks, chosen by name: ``build_generator`` and ``build_discriminator``.

- ``generators``: the U-Net generator, its encoder and decoder blocks, the color-bin U-Net.
- ``discriminators``: the conditional PatchGAN, the multi-scale PatchGAN, the semantic one.
- ``heads``: ``AnnealedMean``, which decodes color-bin logits into ab.
- ``normalization``: the norms by name, per-sample batch norm, demodulation, SPADE.
- ``upsampling``: the decoder's transposed convolution or ``ResizeConv``.
- ``initialization``: the paper's init, spectral normalization, parameter counts.
"""

from model.networks.discriminators import (
    DISCRIMINATORS,
    MultiScaleDiscriminator,
    PatchDiscriminator,
    SemanticDiscriminator,
    build_discriminator,
    patch_discriminator,
)
from model.networks.generators import (
    BinnedColorGenerator,
    DownBlock,
    UNetGenerator,
    UpBlock,
    build_generator,
)
from model.networks.heads import TEMPERATURE, AnnealedMean
from model.networks.initialization import count_parameters, init_weights, spectral_normalize
from model.networks.normalization import (
    BatchNorm,
    Demodulated,
    SpatiallyAdaptiveNorm,
    conv_bias,
    demodulate,
    group_count,
    norm_layer,
    use_sample_statistics,
)
from model.networks.upsampling import ResizeConv, upsampling

__all__ = [
    "DISCRIMINATORS",
    "TEMPERATURE",
    "AnnealedMean",
    "BatchNorm",
    "BinnedColorGenerator",
    "Demodulated",
    "DownBlock",
    "MultiScaleDiscriminator",
    "PatchDiscriminator",
    "ResizeConv",
    "SemanticDiscriminator",
    "SpatiallyAdaptiveNorm",
    "UNetGenerator",
    "UpBlock",
    "build_discriminator",
    "build_generator",
    "conv_bias",
    "count_parameters",
    "demodulate",
    "group_count",
    "init_weights",
    "norm_layer",
    "patch_discriminator",
    "spectral_normalize",
    "upsampling",
    "use_sample_statistics",
]
