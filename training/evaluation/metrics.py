"""Translation quality metrics: pixel error, PSNR, SSIM, sharpness, color, artifacts, segmentation.

Every function here is pure: it takes images or label maps and returns numbers, per image where
that makes sense, so the evaluator can average over a split and tests can check each one against
hand-computed values. Images are float tensors (N, C, H, W) in [0, 1] unless a function says
otherwise; :func:`unit_images` makes them from uint8 (N, H, W, 3) arrays. PSNR and SSIM come
from torchmetrics; FID and KID wrap torchmetrics around an Inception network whose weights the
user supplies (nothing is downloaded); the saturated regions of the blob count are labelled by
scipy.ndimage.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as functional
from scipy import ndimage
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


def psnr(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image: (N,). Identical images give inf."""
    return peak_signal_noise_ratio(
        outputs, targets, data_range=1.0, reduction="none", dim=(1, 2, 3)
    )


def ssim(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Structural similarity per image (11x11 Gaussian window, sigma 1.5): (N,)."""
    return structural_similarity_index_measure(outputs, targets, data_range=1.0, reduction="none")


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


# -- artifacts: checkerboard grids and saturated blobs -----------------------------------------


CHECKERBOARD_PERIODS = (2, 4, 8)


def _checkerboard_peaks() -> tuple[tuple[float, float], ...]:
    # A stack of stride-2 transposed convolutions modulates the image with patterns of period
    # 2, 4, 8... along each axis; a product of such patterns has its power at (0, f), (f, 0),
    # (f, f) and (f, -f). At f = 1/2, (f, -f) is the same frequency as (f, f).
    peaks: list[tuple[float, float]] = []
    for period in CHECKERBOARD_PERIODS:
        frequency = 1.0 / period
        peaks += [(0.0, frequency), (frequency, 0.0), (frequency, frequency)]
        if period != 2:
            peaks.append((frequency, -frequency))
    return tuple(peaks)


CHECKERBOARD_PEAKS = _checkerboard_peaks()
# The Hann window spreads a sinusoid that sits on a bin over that bin and the next one on each
# side, so the background is read from bins 2 to 4 away: outside the peak's own leakage, yet
# close enough that the smooth falloff of a photo's spectrum barely changes across them.
CHECKERBOARD_NEIGHBOURS = (2, 4)
# Added to every power so that a flat image (no power anywhere) scores 0 dB, not nan.
POWER_FLOOR = 1e-12
# An output pixel is saturated when even its darkest channel is at least 243 of 255: the blobs
# that per-sample normalization leaves are blown-out white, whereas a vivid color (a yellow
# flower) keeps one channel low.
SATURATION_LEVEL = 0.95
# The target already has a bright region where its darkest channel is at least 204 of 255: a
# white wall the photo shows at 0.9 and the output at 0.97 is an exposure difference, not an
# invented blob.
TARGET_BRIGHT_LEVEL = 0.8
# A new saturated region counts as a blob from 0.5% of the image (an 18 x 18 patch at 256 px),
# big enough to catch the eye; smaller specks read as highlights.
BLOB_MIN_AREA = 0.005


def _neighbour_offsets(frequency_y: float, frequency_x: float) -> tuple[torch.Tensor, torch.Tensor]:
    # Photos put much of their power on the two axes of the spectrum (horizons, walls, the
    # image's own edges), so a frequency on an axis is compared with that axis alone; off it,
    # every frequency would look like a peak.
    near, far = CHECKERBOARD_NEIGHBOURS
    steps = torch.arange(-far, far + 1)
    line = steps[steps.abs() >= near]
    if frequency_y == 0.0:
        return torch.zeros_like(line), line
    if frequency_x == 0.0:
        return line, torch.zeros_like(line)
    down, across = torch.meshgrid(steps, steps, indexing="ij")
    keep = torch.maximum(down.abs(), across.abs()) >= near
    return down[keep], across[keep]


def checkerboard_contrast(images: torch.Tensor) -> torch.Tensor:
    """How much the luma's spectrum peaks at the upsampling periods, in dB per image: (N,).

    The luma, less its mean, is multiplied by a 2-D Hann window and Fourier transformed. For each
    frequency (fy, fx) in :data:`CHECKERBOARD_PEAKS` (periods 2, 4 and 8 pixels along y, along
    x and along both diagonals, in cycles per pixel) the power P at the nearest bin is compared
    with the median power M of its neighbours, the bins 2 to 4 bins away (wrapping around the
    spectrum): along the axis for a frequency on an axis (6 bins), else the square ring between
    Chebyshev distances 2 and 4 (72 bins). The image's value is 10 log10 of the mean of P / M
    over the 11 frequencies. The mean is taken of the ratios, not of their logarithms, so that
    a grid at one period is not averaged away by the other frequencies. Photos have smooth
    spectra and score about 2 dB (the Kodak photos 2.0 on average, from -0.7 to 5); a period-2,
    4 or 8 grid of 1/255 in amplitude, at the edge of visibility, added to those photos raises
    them by 7 to 18 dB on average. Compare outputs with targets through
    :func:`checkerboard_score`, not with a fixed number.
    """
    return _peak_contrast(luminance(images.double()))


def chroma_checkerboard_contrast(ab: torch.Tensor) -> torch.Tensor:
    """:func:`checkerboard_contrast` of the color: the power spectra of a Lab image's a and b
    channels, (N, 2, H, W), summed before the peaks are read, in dB per image: (N,).

    A grid of colored dots on an even lightness (red and blue alternating, say) leaves the luma
    nearly flat; this score sees it. The scale of ``ab`` cancels in the ratios."""
    return _peak_contrast(ab.double())


def _peak_contrast(planes: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> dB per image: the channels' power spectra summed, then read at the
    upsampling periods against their neighbours (see :func:`checkerboard_contrast`)."""
    planes = planes - planes.mean(dim=(2, 3), keepdim=True)
    height, width = planes.shape[-2:]
    window = torch.outer(
        torch.hann_window(height, periodic=False, dtype=torch.float64),
        torch.hann_window(width, periodic=False, dtype=torch.float64),
    )
    power = torch.fft.fft2(planes * window).abs().square().sum(dim=1) + POWER_FLOOR
    ratios = []
    for frequency_y, frequency_x in CHECKERBOARD_PEAKS:
        row = round(frequency_y * height) % height
        column = round(frequency_x * width) % width
        down, across = _neighbour_offsets(frequency_y, frequency_x)
        neighbours = power[:, (row + down) % height, (column + across) % width]
        ratios.append(power[:, row, column] / neighbours.quantile(0.5, dim=1))
    return 10.0 * torch.log10(torch.stack(ratios, dim=1).mean(dim=1))


def checkerboard_score(output_values: torch.Tensor, target_values: torch.Tensor) -> float:
    """Outputs' mean :func:`checkerboard_contrast` less the targets', in dB.

    0 means the outputs peak at the upsampling periods no more than the real photos do (JPEG's
    8 x 8 blocks, say, raise both sides alike); above a few dB, look for a grid in flat areas.
    """
    return float(output_values.double().mean() - target_values.double().mean())


def new_saturated_area(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Share of the image covered by the largest saturated region the target lacks: (N,).

    A pixel belongs when the output's darkest channel is at least :data:`SATURATION_LEVEL` and
    the target's is below :data:`TARGET_BRIGHT_LEVEL`; regions are 8-connected. An output
    :func:`has_blob` when this share is at least :data:`BLOB_MIN_AREA`.
    """
    fresh = (outputs.amin(dim=1) >= SATURATION_LEVEL) & (targets.amin(dim=1) < TARGET_BRIGHT_LEVEL)
    connected = np.ones((3, 3), dtype=bool)
    shares = []
    for mask in fresh.cpu().numpy():
        labels, count = ndimage.label(mask, structure=connected)
        largest = np.bincount(labels.ravel())[1:].max() if count else 0
        shares.append(largest / mask.size)
    return torch.tensor(shares, dtype=torch.float64)


def has_blob(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Whether each output shows a saturated blob its target lacks: bool (N,)."""
    return new_saturated_area(outputs, targets) >= BLOB_MIN_AREA


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
