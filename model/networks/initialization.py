"""Weights of a built network: the paper's init, spectral normalization, the parameter count."""

from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrizations, parametrize


def spectral_normalize(module: nn.Module) -> nn.Module:
    """Every convolution in ``module`` divided by its largest singular value (Miyato et al.
    2018), estimated by one power iteration per forward in training mode.

    Apply it after ``init_weights``: afterwards ``weight`` is computed from
    ``parametrizations.weight.original``, and initializing it would write into a temporary.
    """
    for layer in list(module.modules()):
        if isinstance(layer, nn.Conv2d):
            parametrizations.spectral_norm(layer)
    return module


def init_weights(module: nn.Module, gain: float = 0.02) -> None:
    """The paper's init: conv weights N(0, 0.02), norm weights N(1, 0.02), biases zero (a
    demodulated conv's stored weight, which only its direction matters for)."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
            if parametrize.is_parametrized(layer, "weight"):
                nn.init.normal_(layer.parametrizations.weight.original, 0.0, gain)
            else:
                nn.init.normal_(layer.weight, 0.0, gain)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif (
            isinstance(layer, nn.BatchNorm2d | nn.InstanceNorm2d | nn.GroupNorm)
            and layer.weight is not None
        ):
            nn.init.normal_(layer.weight, 1.0, gain)
            nn.init.zeros_(layer.bias)


def count_parameters(module: nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())
