"""Pre/post-processing shared by training and serving: color, labels, modes, padding."""

import io

import numpy as np
import pytest
import torch
from PIL import Image

from model.errors import InputError
from model.processing import (
    decode_output,
    encode_input,
    encode_target,
    lab_to_rgb,
    pad_to_multiple,
    prepare_input,
    rgb_to_lab,
)
from model.spec import GeneratorArchitecture, GeneratorSpec, LabelClass

PALETTE = (
    LabelClass(0, "sky", (0, 0, 255)),
    LabelClass(3, "grass", (0, 255, 0)),
    LabelClass(7, "rock", (128, 128, 128)),
)


def spec_for(kind: str, **changes) -> GeneratorSpec:
    base = {
        "photo": dict(in_channels=3, out_channels=3),
        "label_map": dict(
            in_channels=3, out_channels=3, input_kind="label_map", palette=PALETTE, one_hot=True
        ),
        "lab": dict(in_channels=1, out_channels=2, input_kind="grayscale", color_space="lab"),
        "gray": dict(in_channels=1, out_channels=3, input_kind="grayscale"),
    }[kind]
    return GeneratorSpec(architecture=GeneratorArchitecture(num_downs=4), **(base | changes))


def test_lab_round_trip_is_within_one_level():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert np.abs(lab_to_rgb(rgb_to_lab(rgb)).astype(int) - rgb).max() <= 1


def test_lab_of_known_colors():
    lab = rgb_to_lab(np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]], dtype=np.uint8))
    np.testing.assert_allclose(lab[0, 0], [100, 0, 0], atol=0.1)
    np.testing.assert_allclose(lab[0, 1], [0, 0, 0], atol=0.1)
    np.testing.assert_allclose(lab[0, 2], [53.24, 80.09, 67.20], atol=0.1)


def test_label_index_png_becomes_one_hot_by_palette_position():
    ids = np.array([[0, 3], [7, 3]], dtype=np.uint8)
    spec = spec_for("label_map")
    array = prepare_input(Image.fromarray(ids, "L"), spec)
    tensor = encode_input(array, spec)
    assert tensor.shape == (3, 2, 2)
    assert tensor[:, 0, 0].tolist() == [1, 0, 0]
    assert tensor[:, 0, 1].tolist() == [0, 1, 0]
    assert tensor[:, 1, 0].tolist() == [0, 0, 1]


def test_color_coded_label_map_maps_through_palette():
    rgb = np.array([[[0, 0, 255], [0, 255, 0]], [[128, 128, 128], [0, 0, 255]]], dtype=np.uint8)
    ids = prepare_input(Image.fromarray(rgb), spec_for("label_map"))
    assert ids.tolist() == [[0, 3], [7, 0]]


def test_color_tolerance_allows_jpeg_noise_only_when_asked():
    rgb = np.full((2, 2, 3), (3, 250, 2), dtype=np.uint8)
    with pytest.raises(InputError, match=r"palette color: \(3, 250, 2\) in 4 pixel\(s\)$"):
        prepare_input(Image.fromarray(rgb), spec_for("label_map"))
    ids = prepare_input(Image.fromarray(rgb), spec_for("label_map"), palette_tolerance=6)
    assert ids.tolist() == [[3, 3], [3, 3]]


def test_exact_and_noisy_colors_in_one_label_map_each_find_their_class():
    rgb = np.array([[[0, 0, 255], [2, 252, 1]], [[128, 128, 128], [130, 126, 129]]], dtype=np.uint8)
    ids = prepare_input(Image.fromarray(rgb), spec_for("label_map"), palette_tolerance=4)
    assert ids.tolist() == [[0, 3], [7, 7]]
    with pytest.raises(
        InputError,
        match=r"2 color\(s\) not in the palette in 2 pixel\(s\), more than 0 .*: "
        r"\(2, 252, 1\) in 1 pixel\(s\), \(130, 126, 129\) in 1 pixel\(s\)$",
    ):
        prepare_input(Image.fromarray(rgb), spec_for("label_map"))


def test_unknown_class_ids_are_named():
    ids = np.array([[0, 9]], dtype=np.uint8)
    with pytest.raises(InputError, match="class ids not in the palette: 9"):
        prepare_input(Image.fromarray(ids, "L"), spec_for("label_map"))


def test_lab_model_recombines_output_with_input_lightness():
    spec = spec_for("lab")
    rng = np.random.default_rng(1)
    photo = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    array = prepare_input(Image.fromarray(photo), spec)
    target = encode_target(array, spec)
    assert encode_input(array, spec).shape == (1, 8, 8)
    assert target.shape == (2, 8, 8)
    # Decoding the true ab with the input's L gives back the photo.
    restored = decode_output(target, spec, array)
    assert np.abs(restored.astype(int) - photo).max() <= 2


@pytest.mark.parametrize("mode", ["RGBA", "P", "CMYK", "I;16", "L", "LA"])
def test_every_common_mode_becomes_the_expected_array(mode):
    rgb = Image.fromarray(np.full((6, 5, 3), 200, dtype=np.uint8))
    if mode == "I;16":
        image = Image.fromarray(np.full((6, 5), 200 * 257, dtype=np.uint16))
    else:
        image = rgb.convert(mode)
    photo = prepare_input(image, spec_for("photo"))
    assert photo.shape == (6, 5, 3) and photo.dtype == np.uint8
    assert abs(int(photo.mean()) - 200) <= 3
    gray = prepare_input(image, spec_for("gray"))
    assert gray.shape == (6, 5)


def test_exif_orientation_is_applied():
    image = Image.fromarray(np.zeros((10, 20, 3), dtype=np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    decoded = Image.open(io.BytesIO(buffer.getvalue()))
    assert prepare_input(decoded, spec_for("photo")).shape == (20, 10, 3)


@pytest.mark.parametrize("size", [(333, 517), (5, 300), (1, 1), (256, 256)])
def test_padding_reaches_the_multiple_and_keeps_the_image(size):
    batch = np.random.default_rng(0).standard_normal((1, 3, *size)).astype(np.float32)
    padded, original = pad_to_multiple(batch, 64)
    assert original == size
    assert padded.shape[-2] % 64 == 0 and padded.shape[-1] % 64 == 0
    assert padded.shape[-2] - size[0] < 64 and padded.shape[-1] - size[1] < 64
    assert np.array_equal(padded[..., : size[0], : size[1]], batch)


def test_padding_matches_torch_reflect_padding():
    batch = np.random.default_rng(1).standard_normal((1, 2, 37, 53)).astype(np.float32)
    padded, _ = pad_to_multiple(batch, 16)
    expected = torch.nn.functional.pad(torch.from_numpy(batch), (0, 11, 0, 11), mode="reflect")
    assert np.array_equal(padded, expected.numpy())


def test_output_decoding_maps_range_to_bytes():
    spec = spec_for("photo")
    output = torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 2, 2)
    image = decode_output(output, spec)
    assert image.dtype == np.uint8 and image.shape == (2, 2, 3)
    assert image[0, 0].tolist() == [0, 128, 255]
