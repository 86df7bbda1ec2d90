"""The loss functions: adversarial objectives (vanilla, least-squares, hinge), pix2pixHD's
feature matching, the R1 penalty and OASIS's segmenting discriminator's losses.

A multi-scale discriminator gives a list with one output per scale where a PatchDiscriminator
gives one; every loss here takes either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as functional


class GANLoss:
    """The adversarial objective on the discriminator's per-patch logits.

    ``vanilla`` is binary cross-entropy on logits (the paper), ``lsgan`` least squares, and
    ``hinge`` the hinge loss (for the generator: -mean(D(fake))).
    """

    def __init__(self, mode: str = "vanilla"):
        if mode not in ("vanilla", "lsgan", "hinge"):
            raise ValueError(f"unknown gan mode {mode!r}")
        self.mode = mode

    def discriminator(self, logits: torch.Tensor | list[torch.Tensor], real: bool) -> torch.Tensor:
        if isinstance(logits, list):
            return _mean([self.discriminator(scale, real) for scale in logits])
        logits = logits.float()
        if self.mode == "vanilla":
            target = torch.ones_like(logits) if real else torch.zeros_like(logits)
            return functional.binary_cross_entropy_with_logits(logits, target)
        if self.mode == "lsgan":
            return ((logits - (1.0 if real else 0.0)) ** 2).mean()
        return functional.relu(1.0 - logits if real else 1.0 + logits).mean()

    def generator(self, logits: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        if isinstance(logits, list):
            return _mean([self.generator(scale) for scale in logits])
        logits = logits.float()
        if self.mode == "hinge":
            return -logits.mean()
        return self.discriminator(logits, real=True)

    def threshold(self) -> float:
        """The logit above which D calls a patch real."""
        return 0.5 if self.mode == "lsgan" else 0.0

    def accuracy(self, logits: torch.Tensor | list[torch.Tensor], real: bool) -> torch.Tensor:
        """The share of patches that D classifies rightly (no gradient)."""
        if isinstance(logits, list):
            return _mean([self.accuracy(scale, real) for scale in logits])
        logits = logits.detach().float()
        right = logits > self.threshold() if real else logits <= self.threshold()
        return right.float().mean()


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).mean()


def focal_frequency_loss(
    fake: torch.Tensor, real: torch.Tensor, alpha: float = 1.0
) -> torch.Tensor:
    """Focal frequency loss (Jiang et al., ICCV 2021): the squared distance between the 2-D
    spectra of ``fake`` and ``real`` (orthonormal FFT per channel), each frequency weighted by
    its own distance to the power ``alpha``, scaled so that each image's largest weight is 1.

    The weights carry no gradient: they steer the loss towards the frequencies G gets most
    wrong, which under L1 are the high ones that make texture and edges.
    """
    fake_spectrum = torch.fft.fft2(fake.float(), norm="ortho")
    real_spectrum = torch.fft.fft2(real.float(), norm="ortho")
    distance = (fake_spectrum - real_spectrum).abs().square()
    with torch.no_grad():
        weight = distance.sqrt() ** alpha
        peak = weight.flatten(1).amax(dim=1).clamp(min=1e-12)
        weight = weight / peak.view(-1, *([1] * (weight.ndim - 1)))
    return (weight * distance).mean()


def feature_matching_loss(
    fake: list[torch.Tensor] | list[list[torch.Tensor]],
    real: list[torch.Tensor] | list[list[torch.Tensor]],
) -> torch.Tensor:
    """pix2pixHD's feature matching: L1 between D's activations on (A, G(A)) and on (A, B).

    Each argument is one scale's activations, layer by layer (a PatchDiscriminator's), or a
    list of those (a MultiScaleDiscriminator's). The real pair's activations are targets: no
    gradient reaches them. As in pix2pixHD, a scale's layers are weighted 4 / their number
    (4 / (n_layers + 1)) and the scales averaged.
    """
    if isinstance(fake[0], torch.Tensor):
        fake, real = [fake], [real]
    total = torch.zeros((), device=fake[0][0].device)
    for fake_layers, real_layers in zip(fake, real, strict=True):
        weight = 4.0 / (len(fake_layers) * len(fake))
        for fake_layer, real_layer in zip(fake_layers, real_layers, strict=True):
            total = total + weight * functional.l1_loss(
                fake_layer.float(), real_layer.detach().float()
            )
    return total


class SemanticLoss:
    """OASIS's losses for a :class:`~model.networks.SemanticDiscriminator`: cross-entropy over the
    map's classes plus "fake" (the last logit), each real class weighted per batch by the
    inverse of its pixel count, so that a window counts as much as the wall around it.

    The classes are read from the one-hot label map (the argmax of its channels). A class's
    weight is N * H * W / (classes present x its pixels): 1 for every pixel when all present
    classes are equally large. "Fake" weighs 1. The pixels of the ``ignore``d classes (channel
    indices: catch-alls such as a "background" that is sky, trees or the black fill of a
    rectified photo) take part in no term: D does not learn them, and no pixel of theirs pulls
    G towards the class's most typical look (their neighbours' terms still reach them through
    D's receptive field).
    """

    def __init__(self, ignore: tuple[int, ...] = ()):
        self.ignore = tuple(ignore)

    def classes(self, one_hot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class index per pixel (N, H, W), balancing weight per pixel (N, H, W), 0 where the
        class is ignored)."""
        one_hot = one_hot.float()
        counts = one_hot.sum(dim=(0, 2, 3))
        counts[list(self.ignore)] = 0
        kept = counts.sum()
        present = (counts > 0).sum().clamp(min=1)
        weights = torch.where(counts > 0, kept / (present * counts.clamp(min=1)), 0.0)
        labels = one_hot.argmax(dim=1)
        return labels, weights[labels] * (one_hot[:, 0].numel() / kept.clamp(min=1))

    def real(self, logits: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        """The term for D on real photos, and for G on its outputs: each pixel its map's class."""
        labels, weights = self.classes(one_hot)
        loss = functional.cross_entropy(logits.float(), labels, reduction="none")
        return (loss * weights).mean()

    def fake(self, logits: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        """The term for D on generated images from the maps ``one_hot``: every pixel "fake"."""
        fake = logits.shape[1] - 1
        labels = torch.full_like(logits[:, 0], fake, dtype=torch.long)
        loss = functional.cross_entropy(logits.float(), labels, reduction="none")
        kept = self._kept(one_hot)
        return (loss * kept).sum() / kept.sum().clamp(min=1)

    def accuracy(self, logits: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        """The share of a real photo's (not ignored) pixels that D labels with their class."""
        right = (logits.detach().argmax(dim=1) == one_hot.argmax(dim=1)).float()
        kept = self._kept(one_hot)
        return (right * kept).sum() / kept.sum().clamp(min=1)

    def _kept(self, one_hot: torch.Tensor) -> torch.Tensor:
        """1 on the pixels of classes not ignored, else 0: (N, H, W)."""
        kept = torch.ones_like(one_hot[:, 0], dtype=torch.float32)
        for channel in self.ignore:
            kept = kept * (1.0 - one_hot[:, channel].float())
        return kept


class R1Penalty:
    """Lazy R1 regularization (Mescheder et al. 2018; lazy as in StyleGAN2): a penalty on D's
    gradient with respect to real images, which keeps D from growing steep around the data.

    Due every ``every``-th D step, and then ``every`` times gamma / 2 * E ||grad_B D(A, B)||^2,
    so that per step it weighs gamma / 2 on average at 1 / ``every`` of the cost. D(A, B) is the
    image's mean patch logit, the scalar the adversarial loss averages, so gamma means the same
    at any image size; a multi-scale D sums its scales' penalties.
    """

    def __init__(self, gamma: float, every: int = 16):
        self.gamma = gamma
        self.every = every

    def due(self, d_step: int) -> bool:
        """Whether D step number ``d_step`` (counted from 0 over the whole run) adds it."""
        return self.gamma > 0 and d_step % self.every == 0

    def __call__(
        self, discriminator: torch.nn.Module, condition: torch.Tensor, image: torch.Tensor
    ) -> torch.Tensor:
        """The term for D's loss. Computed in fp32 whatever autocast surrounds it (a squared
        gradient underflows in half precision); its graph runs through the gradient, so D's
        backward differentiates the penalty."""
        image = image.detach().requires_grad_(True)
        with torch.autocast(image.device.type, enabled=False):
            logits = discriminator(condition.detach(), image)
            penalty = torch.zeros((), device=image.device)
            for scale in logits if isinstance(logits, list) else [logits]:
                per_image = scale.float().flatten(1).mean(dim=1)
                (gradient,) = torch.autograd.grad(per_image.sum(), image, create_graph=True)
                penalty = penalty + gradient.square().flatten(1).sum(dim=1).mean()
        return 0.5 * self.gamma * self.every * penalty
