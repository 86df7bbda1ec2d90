"""Metric functions against values worked out by hand on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from training.evaluation import metrics


def gray(values) -> torch.Tensor:
    """A (1, 3, H, W) image whose three channels all hold ``values`` (so luma == values)."""
    plane = torch.tensor(values, dtype=torch.float32)
    return plane.expand(3, *plane.shape).unsqueeze(0).clone()


def test_unit_images_scales_uint8_to_channels_first_unit_range():
    images = np.zeros((2, 4, 5, 3), dtype=np.uint8)
    images[1, 0, 0] = (255, 0, 51)
    tensor = metrics.unit_images(images)
    assert tensor.shape == (2, 3, 4, 5)
    assert tensor[1, :, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])


def test_l1_error_is_the_mean_absolute_difference_per_image():
    output = gray([[0.0, 0.0], [0.0, 0.0]])
    target = gray([[0.5, 1.0], [0.0, 0.5]])
    assert metrics.l1_error(output, target).tolist() == pytest.approx([0.5])


def test_psnr_of_a_uniform_error_of_a_tenth_is_20_db():
    output = torch.zeros(2, 3, 16, 16)
    target = torch.full((2, 3, 16, 16), 0.1)
    assert metrics.psnr(output, target).tolist() == pytest.approx([20.0, 20.0], abs=1e-4)


def test_ssim_is_one_for_identical_images_and_lower_for_noise():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 32, 32, generator=generator)
    noisy = (image + 0.3 * torch.randn(1, 3, 32, 32, generator=generator)).clamp(0, 1)
    assert metrics.ssim(image, image).item() == pytest.approx(1.0, abs=1e-5)
    assert metrics.ssim(noisy, image).item() < 0.8


def test_gradient_magnitude_of_a_ramp_is_its_slope():
    ramp = gray([[0.0, 0.1, 0.2, 0.3]] * 3)
    assert metrics.gradient_magnitude(ramp).item() == pytest.approx(0.1)


def test_gradient_magnitude_uses_forward_differences_in_both_directions():
    # One pixel with both differences: right 1 - 0, down 1 - 0 -> sqrt(2).
    checker = gray([[0.0, 1.0], [1.0, 0.0]])
    assert metrics.gradient_magnitude(checker).item() == pytest.approx(math.sqrt(2.0))


def test_laplacian_variance_of_a_single_dot():
    # Valid 3x3 responses of a 3x4 image with a dot at (1, 1): -4 and 1; variance 6.25.
    dot = gray([[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    assert metrics.laplacian_variance(dot).item() == pytest.approx(6.25)


def test_luminance_weights_the_channels_like_bt601():
    red = torch.zeros(1, 3, 1, 1)
    red[0, 0] = 1.0
    assert metrics.luminance(red).item() == pytest.approx(0.299)


def test_sharpness_ratio_is_a_ratio_of_means():
    assert metrics.sharpness_ratio(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 2.0])) == 1.0
    assert metrics.sharpness_ratio(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0])) == 0.5
    assert math.isnan(metrics.sharpness_ratio(torch.tensor([1.0]), torch.tensor([0.0])))


def test_a_blurred_image_is_less_sharp_than_the_original():
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 32, 32, generator=generator)
    blurred = nn.functional.avg_pool2d(image, 3, stride=1, padding=1, count_include_pad=False)
    ratio = metrics.sharpness_ratio(
        metrics.gradient_magnitude(blurred), metrics.gradient_magnitude(image)
    )
    assert ratio < 0.6


def test_colorfulness_of_gray_is_zero_and_of_pure_red_is_hand_computed():
    assert metrics.colorfulness(torch.full((1, 3, 4, 4), 0.5)).item() == pytest.approx(0.0)
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    # rg = 255, yb = 127.5, no spread: 0.3 * sqrt(255² + 127.5²).
    expected = 0.3 * math.hypot(255.0, 127.5)
    assert metrics.colorfulness(red).item() == pytest.approx(expected, rel=1e-5)


def test_ab_channels_of_gray_pixels_are_zero():
    images = np.full((1, 2, 2, 3), 128, dtype=np.uint8)
    assert np.abs(metrics.ab_channels(images)).max() < 0.01


def test_ab_psnr_uses_the_ab_range_as_peak():
    output = np.zeros((1, 2, 2, 2))
    target = np.zeros((1, 2, 2, 2))
    target[..., 0] = 11.0  # a off by 0.1 of the scale, b exact: mse 0.005 on a 2-wide range
    assert metrics.ab_psnr(output, target)[0] == pytest.approx(10 * math.log10(4 / 0.005))


def test_ab_error_is_euclidean_in_the_ab_plane():
    output = np.zeros((1, 1, 1, 2))
    target = np.array([[[[3.0, 4.0]]]])
    assert metrics.ab_error(output, target).item() == pytest.approx(5.0)


def test_count_within_counts_errors_at_or_below_each_threshold():
    errors = np.array([0.0, 1.0, 3.0, 10.0])
    assert metrics.count_within(errors, (0.0, 2.0, 5.0)).tolist() == [1, 2, 3]


def test_area_under_a_linear_accuracy_curve_is_one_half():
    assert metrics.area_under_curve([0.0, 0.5, 1.0], (0.0, 1.0, 2.0)) == pytest.approx(0.5)
    assert metrics.area_under_curve(np.ones(151)) == pytest.approx(1.0)


def smooth_photos(seed: int, count: int = 1, size: int = 64) -> torch.Tensor:
    """Photo-like images: coarse random colors upsampled bicubically, plus a little noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, size // 8, size // 8, generator=generator)
    smooth = nn.functional.interpolate(coarse, size=(size, size), mode="bicubic")
    return (smooth + 0.01 * torch.randn(count, 3, size, size, generator=generator)).clamp(0, 1)


def grid(period: int, size: int = 64) -> torch.Tensor:
    """A checkerboard of squares period / 2 wide, in -0.5..0.5."""
    down, across = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    return ((down // (period // 2) + across // (period // 2)) % 2).float() - 0.5


@pytest.mark.parametrize("period", [2, 4, 8])
def test_an_injected_checkerboard_raises_the_contrast_at_its_period(period):
    photo = smooth_photos(seed=0)
    gridded = (photo + 0.02 * grid(period)).clamp(0, 1)  # about 5 of 255 levels
    clean = metrics.checkerboard_contrast(photo)
    assert metrics.checkerboard_contrast(gridded).item() > clean.item() + 10.0


def test_a_grid_along_one_axis_only_is_caught_too():
    photo = smooth_photos(seed=1)
    stripes = (torch.arange(64) % 4 < 2).float() - 0.5  # period 4 across, constant down
    striped = (photo + 0.02 * stripes).clamp(0, 1)
    clean = metrics.checkerboard_contrast(photo)
    assert metrics.checkerboard_contrast(striped).item() > clean.item() + 10.0


def test_photo_like_images_score_near_zero_against_each_other():
    outputs, targets = smooth_photos(seed=2, count=4), smooth_photos(seed=3, count=4)
    output_values = metrics.checkerboard_contrast(outputs)
    assert metrics.checkerboard_score(output_values, output_values) == 0.0
    target_values = metrics.checkerboard_contrast(targets)
    assert abs(metrics.checkerboard_score(output_values, target_values)) < 3.0
    gridded = metrics.checkerboard_contrast((outputs + 0.02 * grid(2)).clamp(0, 1))
    assert metrics.checkerboard_score(gridded, target_values) > 10.0


def test_axis_aligned_content_is_not_mistaken_for_a_grid():
    # A ramp puts all its power on the x axis of the spectrum; compared with off-axis
    # neighbours it would score 40 dB.
    ramp = torch.linspace(0.0, 1.0, 64).expand(1, 3, 64, 64)
    assert abs(metrics.checkerboard_contrast(ramp).item()) < 3.0


def test_a_grid_of_colored_dots_on_even_lightness_shows_in_the_ab_score_only():
    photo = smooth_photos(seed=5, count=2)
    # Red up where blue goes down, by amounts that cancel in the luma: a red/blue dot grid.
    dots = grid(8) * torch.tensor([0.04, 0.0, -0.04 * 0.299 / 0.114]).view(1, 3, 1, 1)
    dotted = (photo + dots).clamp(0, 1)
    luma_rise = metrics.checkerboard_contrast(dotted) - metrics.checkerboard_contrast(photo)
    assert luma_rise.abs().max().item() < 3.0

    def chroma(images):
        uint8 = (images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        ab = torch.from_numpy(metrics.ab_channels(uint8)).permute(0, 3, 1, 2)
        return metrics.chroma_checkerboard_contrast(ab)

    assert (chroma(dotted) - chroma(photo)).min().item() > 10.0
    assert metrics.chroma_checkerboard_contrast(torch.zeros(1, 2, 32, 32)).tolist() == [0.0]


def test_a_flat_image_has_zero_checkerboard_contrast():
    flat = torch.full((1, 3, 32, 32), 0.5)
    assert metrics.checkerboard_contrast(flat).tolist() == [0.0]


def with_square(images: torch.Tensor, top: int, left: int, side: int, color) -> torch.Tensor:
    painted = images.clone()
    painted[:, :, top : top + side, left : left + side] = torch.tensor(color).view(1, 3, 1, 1)
    return painted


WHITE = (1.0, 1.0, 1.0)


def test_a_white_blob_the_target_lacks_is_a_blob():
    target = smooth_photos(seed=4) * 0.7  # nowhere near white
    output = with_square(target, 10, 20, 10, WHITE)  # 100 of 4096 pixels
    assert metrics.new_saturated_area(output, target).tolist() == pytest.approx([100 / 4096])
    assert metrics.has_blob(output, target).tolist() == [True]


def test_a_bright_region_the_target_also_has_is_not_a_blob():
    target = with_square(smooth_photos(seed=4) * 0.7, 10, 20, 10, (0.9, 0.9, 0.85))
    output = with_square(target, 10, 20, 10, WHITE)
    assert metrics.has_blob(output, target).tolist() == [False]


def test_specks_below_the_area_threshold_are_not_blobs_even_together():
    target = smooth_photos(seed=4) * 0.7
    output = target
    for top, left in ((5, 5), (5, 30), (40, 10), (40, 50)):
        output = with_square(output, top, left, 4, WHITE)  # 16 pixels, under 0.5% of 4096
    assert metrics.new_saturated_area(output, target).tolist() == pytest.approx([16 / 4096])
    assert metrics.has_blob(output, target).tolist() == [False]


def test_a_vivid_color_is_not_saturated_white():
    target = smooth_photos(seed=4) * 0.7
    output = with_square(target, 10, 20, 20, (1.0, 1.0, 0.2))  # bright yellow
    assert metrics.has_blob(output, target).tolist() == [False]


def test_confusion_matrix_rows_are_truth_columns_predictions():
    confusion = metrics.confusion_matrix(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3)
    assert confusion.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 0]]


def test_segmentation_scores_by_hand():
    confusion = np.array([[1, 1, 0], [0, 2, 0], [0, 0, 0]])
    scores = metrics.segmentation_scores(confusion)
    assert scores.pixel_accuracy == pytest.approx(3 / 4)
    # Per class: 1/2 and 2/2; class 2 never occurs and is left out of the means.
    assert scores.class_accuracy == pytest.approx(0.75)
    # IoU: class 0 = 1 / (2 + 1 - 1), class 1 = 2 / (2 + 3 - 2).
    assert scores.mean_iou == pytest.approx((0.5 + 2 / 3) / 2)
    assert math.isnan(scores.per_class_iou[2])


def test_a_class_predicted_but_never_true_counts_as_zero_iou():
    confusion = metrics.confusion_matrix(np.array([0, 0]), np.array([0, 1]), 2)
    scores = metrics.segmentation_scores(confusion)
    assert scores.per_class_iou == pytest.approx((0.5, 0.0))
    assert scores.mean_iou == pytest.approx(0.25)
    assert scores.class_accuracy == pytest.approx(0.5)


def test_confusion_matrix_rejects_maps_of_different_sizes():
    with pytest.raises(ValueError, match="differ in size"):
        metrics.confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)), 2)


class ColorStatistics(nn.Module):
    """A stand-in feature extractor: per-channel means and standard deviations."""

    num_features = 6

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        images = images.float() / 255.0
        return torch.cat([images.mean(dim=(2, 3)), images.std(dim=(2, 3))], dim=1)


def test_fid_and_kid_are_near_zero_for_the_same_images_and_grow_with_a_shift():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    same = metrics.distribution_scores(real, real.copy(), ColorStatistics())
    shifted = np.clip(real.astype(np.int16) // 2, 0, 255).astype(np.uint8)
    different = metrics.distribution_scores(real, shifted, ColorStatistics())
    assert abs(same["fid"]) < 1e-3
    assert abs(same["kid"]) < 1e-3
    assert different["fid"] > 0.01
    assert different["kid"] > same["kid"]


def test_inception_weights_must_be_torchvisions(tmp_path):
    with pytest.raises(FileNotFoundError):
        metrics.InceptionFeatures(tmp_path / "missing.pth")
    wrong = tmp_path / "fid_inception.pth"
    torch.save({"fc.weight": torch.zeros(1008, 4)}, wrong)
    with pytest.raises(ValueError, match="1008 classes"):
        metrics.InceptionFeatures(wrong)
