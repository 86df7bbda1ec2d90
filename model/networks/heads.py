"""The color-bin head: ``AnnealedMean`` turns a colorization generator's bin logits into ab.

Zhang, Isola and Efros ("Colorful Image Colorization", 2016) predict, at every pixel, a
distribution over quantized ab values instead of regressing ab: a regression loss is minimised
by the mean of the plausible colors, which for most objects is a desaturated brown. A generator
whose spec names ``head = "ab_bins"`` (``BinnedColorGenerator``) ends in ``AnnealedMean``,
which turns its bin logits back into the two ab channels of a plain Lab generator, so export,
serving and evaluation see the same contract as for the regression head. The bins themselves
are ``model.color_bins.ab_bins``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from model.processing import AB_SCALE

# The paper's decoding temperature.
TEMPERATURE = 0.38


class AnnealedMean(nn.Module):
    """Bin logits (N, Q, H, W) -> ab (N, 2, H, W) scaled as the spec's ab (Lab / AB_SCALE).

    The mean of the bin centers under softmax(logits / T): T = 1 is the distribution's mean
    (smooth but desaturated, like regression), T -> 0 its mode (vivid but blotchy); the paper's
    T = 0.38 sits between. The centers are a buffer, so the weights carry their own bins.
    """

    def __init__(self, centers: torch.Tensor, temperature: float = TEMPERATURE):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.temperature = float(temperature)
        self.register_buffer("centers", (centers.float() / AB_SCALE).contiguous())  # (Q, 2)

    def forward(self, logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
        temperature = self.temperature if temperature is None else temperature
        # Bins last: for channels_last logits that is their memory order, so the softmax and
        # the product run on contiguous rows without a copy. Softmax in fp32: bf16 logits over
        # T < 1 lose the small differences that decide.
        scores = logits.permute(0, 2, 3, 1).float()
        probabilities = functional.softmax(scores / temperature, dim=-1)
        return (probabilities @ self.centers).permute(0, 3, 1, 2)
