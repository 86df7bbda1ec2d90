"""The discriminator's losses: adversarial objectives (vanilla, least-squares, hinge), pix2pixHD's
feature matching, the R1 penalty, OASIS's segmenting discriminator's losses, and the history pool.

A multi-scale discriminator gives a list with one output per scale where a PatchDiscriminator
gives one; every loss here takes either.
"""

from __future__ import annotations

import torch
import torch.nn.functional as functional

from training.config import D_AUGMENTS


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


class HistoryPool:
    """A buffer of past (A, fake B) pairs shown to D in place of some fresh ones.

    Returns a batch in which each element is, with probability 0.5, swapped for a stored
    pair (Shrivastava et al. 2017). Size 0 passes batches through.
    """

    def __init__(self, size: int, generator: torch.Generator | None = None):
        self.size = size
        self.conditions: list[torch.Tensor] = []
        self.images: list[torch.Tensor] = []
        self.random = generator

    def query(self, condition: torch.Tensor, image: torch.Tensor):
        if self.size == 0:
            return condition, image
        shown = []
        for pair in zip(condition.detach(), image.detach(), strict=True):
            if len(self.images) < self.size:
                self.conditions.append(pair[0])
                self.images.append(pair[1])
            elif torch.rand((), generator=self.random).item() < 0.5:
                slot = int(torch.randint(0, self.size, (), generator=self.random).item())
                stored = self.conditions[slot], self.images[slot]
                self.conditions[slot], self.images[slot] = pair
                pair = stored
            shown.append(pair)
        conditions, images = zip(*shown, strict=True)
        return torch.stack(conditions), torch.stack(images)


# -- differentiable augmentation of the pairs D sees --------------------------------------------


class PairAugment:
    """DiffAugment (Zhao et al. 2020) for a conditional discriminator.

    Every pair D judges, real or generated, in D's step and in G's, goes through the same
    random family of transforms, each differentiable in the image, so G learns through them:
    ``color`` jitters B's brightness (+-0.5 in [-1, 1] units), saturation (x0..2) and contrast
    (x0.5..1.5); ``translation`` shifts A and B together by up to 1/8 of the side, filling with
    zeros; ``cutout`` zeroes one square of half the side in A and in B. A map's one-hot channels
    are never color-jittered. D, which sees few real pairs (facades has 400), cannot memorize
    them through the transforms; the transforms never reach G's output or L1.

    :meth:`draw` picks one transform per sample; G's step judges its fake and, for feature
    matching, the real pair under the same draw, so that the two sets of activations compare.
    """

    def __init__(self, policy: tuple[str, ...] = ()):
        unknown = set(policy) - set(D_AUGMENTS)
        if unknown:
            raise ValueError(f"unknown D augmentation {sorted(unknown)}; choose from {D_AUGMENTS}")
        self.policy = tuple(policy)

    def __bool__(self) -> bool:
        return bool(self.policy)

    def draw(self, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """Random parameters for a batch shaped like ``like`` (N, C, H, W)."""
        count, _, height, width = like.shape
        uniform = lambda *shape: torch.rand(*shape, device=like.device)  # noqa: E731
        draws = {}
        if "color" in self.policy:
            draws["brightness"] = uniform(count, 1, 1, 1) - 0.5
            draws["saturation"] = uniform(count, 1, 1, 1) * 2
            draws["contrast"] = uniform(count, 1, 1, 1) + 0.5
        if "translation" in self.policy:
            limits = torch.tensor([height // 8, width // 8], device=like.device)
            draws["shift"] = (uniform(count, 2) * (2 * limits + 1)).floor().long() - limits
        if "cutout" in self.policy:
            sides = torch.tensor([height, width], device=like.device)
            draws["cutout"] = (uniform(count, 2) * sides).floor().long()
        return draws

    def __call__(
        self, condition: torch.Tensor, image: torch.Tensor, draws: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if "brightness" in draws:
            image = image + draws["brightness"].to(image.dtype)
            mean = image.mean(dim=1, keepdim=True)
            image = (image - mean) * draws["saturation"].to(image.dtype) + mean
            mean = image.mean(dim=(1, 2, 3), keepdim=True)
            image = (image - mean) * draws["contrast"].to(image.dtype) + mean
        if "shift" in draws:
            condition, image = (_translate(x, draws["shift"]) for x in (condition, image))
        if "cutout" in draws:
            keep = _cutout_mask(image, draws["cutout"])
            condition, image = condition * keep.to(condition.dtype), image * keep.to(image.dtype)
        return condition, image


def _grid(images: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices plus each sample's (dy, dx) offset: (N, H) and (N, W)."""
    height, width = images.shape[-2:]
    rows = torch.arange(height, device=images.device)[None] + offsets[:, :1]
    return rows, torch.arange(width, device=images.device)[None] + offsets[:, 1:]


def _box(rows: torch.Tensor, columns: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(N, H, W): where 0 <= row < height and 0 <= column < width."""
    rows_inside, columns_inside = (rows >= 0) & (rows < height), (columns >= 0) & (columns < width)
    return rows_inside[:, :, None] & columns_inside[:, None]


def _translate(images: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Each image moved by its (dy, dx), zeros where nothing moved in."""
    height, width = images.shape[-2:]
    rows, columns = _grid(images, -shift)
    batch = torch.arange(len(images), device=images.device)[:, None, None]
    source_rows, source_columns = rows.clamp(0, height - 1), columns.clamp(0, width - 1)
    moved = images[batch, :, source_rows[:, :, None], source_columns[:, None]].permute(0, 3, 1, 2)
    return moved * _box(rows, columns, height, width)[:, None].to(images.dtype)


def _cutout_mask(images: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """(N, 1, H, W): 0 inside a box of half the side centred on each center, else 1."""
    down, across = (side // 2 for side in images.shape[-2:])
    offsets = torch.tensor([down // 2, across // 2], device=images.device) - centers
    return ~_box(*_grid(images, offsets), down, across)[:, None]
