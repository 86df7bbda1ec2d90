"""Translation quality metrics: pixel error, PSNR, SSIM, sharpness, color and segmentation scores.

Every function here is pure: it takes images or label maps and returns numbers, per image where
that makes sense, so the evaluator can average over a split and tests can check each one against
hand-computed values. Images are float tensors (N, C, H, W) in [0, 1] unless a function says
otherwise; :func:`unit_images` makes them from uint8 (N, H, W, 3) arrays. PSNR and SSIM come
from torchmetrics; FID and KID wrap torchmetrics around an Inception network whose weights the
user supplies (nothing is downloaded).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as functional
from torch import nn
from torchmetrics.functional.image import (
    peak_signal_noise_ratio,
    structural_similarity_index_measure,
)

from model.processing import AB_SCALE, rgb_to_lab

# Luma weights (ITU-R BT.601), the usual gray for gradient-based sharpness.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
LAPLACIAN_KERNEL = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))
# The colorization literature's accuracy-vs-threshold curve sweeps the ab error from 0 to 150
# (Zhang et al. 2016, "raw accuracy"); its normalized area is the AuC.
AB_THRESHOLDS = tuple(float(t) for t in range(151))


# -- conversions -------------------------------------------------------------------------------


def unit_images(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) or (N, H, W) -> float32 (N, C, H, W) in [0, 1]."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0
    if tensor.ndim == 3:
        return tensor.unsqueeze(1)
    return tensor.permute(0, 3, 1, 2).contiguous()


def luminance(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) RGB -> (N, 1, H, W) luma; one-channel images pass through."""
    if images.shape[1] == 1:
        return images
    weights = torch.tensor(LUMA_WEIGHTS, dtype=images.dtype, device=images.device)
    return (images * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)


def ab_channels(images: np.ndarray) -> np.ndarray:
    """uint8 RGB (N, H, W, 3) -> float32 (N, H, W, 2): the a and b channels of CIE Lab."""
    return np.stack([rgb_to_lab(image)[..., 1:] for image in images])


# -- per-image fidelity ------------------------------------------------------------------------


def l1_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference per image, on the [0, 1] scale: (N,)."""
    return (outputs - targets).abs().flatten(1).mean(dim=1)


def psnr(outputs: torch.Tensor, targets: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: (N,). Identical images give inf."""
    return peak_signal_noise_ratio(
        outputs, targets, data_range=data_range, reduction="none", dim=(1, 2, 3)
    )


def ssim(outputs: torch.Tensor, targets: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Structural similarity per image (11x11 Gaussian window, sigma 1.5): (N,)."""
    return structural_similarity_index_measure(
        outputs, targets, data_range=data_range, reduction="none"
    )


# -- sharpness ---------------------------------------------------------------------------------


def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """Mean gradient magnitude of the luma per image (forward differences): (N,).

    At pixel (y, x) the gradient is (I[y, x+1] - I[y, x], I[y+1, x] - I[y, x]); the mean runs
    over the (H-1) x (W-1) pixels where both differences exist.
    """
    gray = luminance(images)[:, 0]
    across = gray[:, :-1, 1:] - gray[:, :-1, :-1]
    down = gray[:, 1:, :-1] - gray[:, :-1, :-1]
    return (across.square() + down.square()).sqrt().flatten(1).mean(dim=1)


def laplacian_variance(images: torch.Tensor) -> torch.Tensor:
    """Variance of the 4-neighbour Laplacian of the luma per image (valid pixels only): (N,)."""
    kernel = torch.tensor(LAPLACIAN_KERNEL, dtype=images.dtype, device=images.device)
    response = functional.conv2d(luminance(images), kernel.view(1, 1, 3, 3))
    return response.flatten(1).var(dim=1, unbiased=False)


def sharpness_ratio(output_values: torch.Tensor, target_values: torch.Tensor) -> float:
    """How sharp outputs are next to real targets: mean of one over the other; 1.0 is as sharp.

    The ratio of means (not the mean of per-image ratios) keeps flat, nearly edgeless targets
    from dominating.
    """
    target_mean = float(target_values.double().mean())
    if target_mean == 0.0:
        return float("nan")
    return float(output_values.double().mean()) / target_mean


# -- colorization ------------------------------------------------------------------------------


def colorfulness(images: torch.Tensor) -> torch.Tensor:
    """Hasler and Süsstrunk's (2003) colorfulness per RGB image on the 0..255 scale: (N,).

    With rg = R - G and yb = (R + G) / 2 - B: sqrt(var rg + var yb) + 0.3 sqrt(mean rg² +
    mean yb²). Gray images score 0; vivid photos score around 100.
    """
    rgb = images * 255.0
    red, green, blue = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    rg = (red - green).flatten(1)
    yb = (0.5 * (red + green) - blue).flatten(1)
    spread = (rg.var(dim=1, unbiased=False) + yb.var(dim=1, unbiased=False)).sqrt()
    mean = (rg.mean(dim=1).square() + yb.mean(dim=1).square()).sqrt()
    return spread + 0.3 * mean


def ab_psnr(output_ab: np.ndarray, target_ab: np.ndarray) -> np.ndarray:
    """PSNR of the ab channels per image, peak = the ab range (2 x 110): (N,) in dB.

    Inputs are (N, H, W, 2) raw Lab ab values. Identical ab gives inf.
    """
    difference = (output_ab.astype(np.float64) - target_ab) / AB_SCALE
    mse = np.square(difference).reshape(len(difference), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(4.0 / mse)


def ab_error(output_ab: np.ndarray, target_ab: np.ndarray) -> np.ndarray:
    """Euclidean ab distance per pixel: (N, H, W, 2) pairs -> (N, H, W)."""
    return np.sqrt(np.square(output_ab.astype(np.float64) - target_ab).sum(axis=-1))


def count_within(errors: np.ndarray, thresholds=AB_THRESHOLDS) -> np.ndarray:
    """How many of ``errors`` are at most each threshold: int64 (len(thresholds),)."""
    ordered = np.sort(np.asarray(errors, dtype=np.float64).ravel())
    return np.searchsorted(ordered, np.asarray(thresholds, dtype=np.float64), side="right")


def area_under_curve(accuracy: np.ndarray, thresholds=AB_THRESHOLDS) -> float:
    """Normalized area under an accuracy-vs-threshold curve (trapezoids), 0..1."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    accuracy = np.asarray(accuracy, dtype=np.float64)
    span = thresholds[-1] - thresholds[0]
    widths = np.diff(thresholds)
    return float((widths * (accuracy[1:] + accuracy[:-1]) / 2.0).sum() / span)


# -- segmentation (the FCN-score) --------------------------------------------------------------


def confusion_matrix(truth: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) int64 counts; rows are true classes, columns predicted (class positions 0..K-1)."""
    truth = np.asarray(truth, dtype=np.int64).ravel()
    predicted = np.asarray(predicted, dtype=np.int64).ravel()
    if truth.shape != predicted.shape:
        raise ValueError(f"label maps differ in size: {truth.shape} and {predicted.shape}")
    codes = truth * num_classes + predicted
    return np.bincount(codes, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class SegmentationScores:
    """The FCN-score of the pix2pix paper, from one confusion matrix.

    ``class_accuracy`` averages the per-class recall over classes present in the ground truth;
    ``mean_iou`` averages intersection over union over classes present in the ground truth or
    the prediction (a class predicted but never true counts with IoU 0), as the FCN evaluation
    code does.
    """

    pixel_accuracy: float
    class_accuracy: float
    mean_iou: float
    per_class_accuracy: tuple[float, ...]  # nan where the class never occurs in the truth
    per_class_iou: tuple[float, ...]  # nan where the class occurs in neither


def segmentation_scores(confusion: np.ndarray) -> SegmentationScores:
    confusion = np.asarray(confusion, dtype=np.float64)
    correct = np.diag(confusion)
    true_counts = confusion.sum(axis=1)
    predicted_counts = confusion.sum(axis=0)
    union = true_counts + predicted_counts - correct
    with np.errstate(divide="ignore", invalid="ignore"):
        per_class_accuracy = np.where(true_counts > 0, correct / true_counts, np.nan)
        per_class_iou = np.where(union > 0, correct / union, np.nan)
    total = confusion.sum()
    return SegmentationScores(
        pixel_accuracy=float(correct.sum() / total) if total else float("nan"),
        class_accuracy=_nanmean(per_class_accuracy),
        mean_iou=_nanmean(per_class_iou),
        per_class_accuracy=tuple(float(v) for v in per_class_accuracy),
        per_class_iou=tuple(float(v) for v in per_class_iou),
    )


def _nanmean(values: np.ndarray) -> float:
    present = values[~np.isnan(values)]
    return float(present.mean()) if present.size else float("nan")


# -- FID and KID -------------------------------------------------------------------------------


class InceptionFeatures(nn.Module):
    """Inception-v3 pool features (2048) of uint8 (N, 3, H, W) images, for FID and KID.

    Takes torchvision's ``inception_v3_google`` state dict (1000-class fc); the weights file is
    the user's, nothing is downloaded. Images are resized to 299 x 299 and scaled to [-1, 1],
    the range the Google weights were trained on. Scores from these weights rank models the
    same way as the TensorFlow FID network's but are not numerically interchangeable with
    published FIDs.
    """

    num_features = 2048

    def __init__(self, weights: str | Path):
        super().__init__()
        from torchvision.models import inception_v3

        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: Inception weights not found")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        fc = state.get("fc.weight") if isinstance(state, dict) else None
        if fc is None or fc.shape[0] != 1000:
            classes = "no fc layer" if fc is None else f"an fc layer of {fc.shape[0]} classes"
            raise ValueError(
                f"{path}: expected torchvision's Inception-v3 state dict (1000 classes), found "
                f"{classes}"
            )
        network = inception_v3(
            weights=None, aux_logits=True, init_weights=False, transform_input=False
        )
        network.load_state_dict(state)
        network.fc = nn.Identity()
        network.AuxLogits = None
        network.aux_logits = False
        self.network = network.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> InceptionFeatures:
        # torchmetrics moves the module around; it must never leave eval mode.
        return super().train(False)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        scaled = images.float() / 127.5 - 1.0
        scaled = functional.interpolate(
            scaled, size=(299, 299), mode="bilinear", align_corners=False, antialias=True
        )
        return self.network(scaled)


def distribution_scores(
    real: np.ndarray, fake: np.ndarray, features: nn.Module, batch_size: int = 16
) -> dict[str, float]:
    """FID and KID between two sets of uint8 (N, H, W, 3) images, through ``features``."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    count = min(len(real), len(fake))
    if count < 2:
        raise ValueError("FID and KID need at least two images on each side")
    fid = FrechetInceptionDistance(feature=features, reset_real_features=True)
    with warnings.catch_warnings():
        # KID keeps every feature vector; at evaluation sizes that is a few megabytes.
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        kid = KernelInceptionDistance(
            feature=features, subsets=10, subset_size=min(count, 100), reset_real_features=True
        )
    for images, is_real in ((real, True), (fake, False)):
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
            batch = batch.permute(0, 3, 1, 2)
            fid.update(batch, real=is_real)
            kid.update(batch, real=is_real)
    kid_mean, kid_std = kid.compute()
    return {"fid": float(fid.compute()), "kid": float(kid_mean), "kid_std": float(kid_std)}
