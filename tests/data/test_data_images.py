"""Image preprocessing: modes, resize-and-pad / centre crop, normalisation, fast path, bad bytes."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, UnidentifiedImageError

from megatron_infimed.config.presets import get_preset
from megatron_infimed.data.images import ImagePreprocessor, normalize_images, to_rgb


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def test_pad_mode_keeps_the_whole_image_and_pads_with_the_mean_colour():
    white = Image.new("RGB", (64, 32), (255, 255, 255))
    pixels = ImagePreprocessor(32).decode(encode(white))
    assert pixels.shape == (3, 32, 32) and pixels.dtype == torch.uint8
    # 64x32 → 32x16, centred: rows 8..23 are the image, the rest the mean colour 0.5*255 → 128
    assert bool((pixels[:, 8:24] == 255).all())
    assert bool((pixels[:, :8] == 128).all()) and bool((pixels[:, 24:] == 128).all())


def test_padding_normalises_to_zero():
    pixels = ImagePreprocessor(32).decode(encode(Image.new("RGB", (64, 32), (0, 0, 0))))
    normalised = normalize_images(pixels, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert abs(float(normalised[:, 0, 0].max())) < 0.01


def test_crop_mode_fills_the_square_from_the_centre():
    array = np.zeros((32, 64, 3), dtype=np.uint8)
    array[:, 16:48] = 200  # the central square is grey, the sides black
    pixels = ImagePreprocessor(32, mode="crop").decode(encode(Image.fromarray(array)))
    assert pixels.shape == (3, 32, 32)
    assert bool((pixels[:, :, 2:30] == 200).all())


def test_image_at_the_right_size_passes_through_unchanged():
    array = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pixels = ImagePreprocessor(64).decode(encode(Image.fromarray(array)))
    assert torch.equal(pixels, torch.from_numpy(array).permute(2, 0, 1))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK"])
def test_common_modes_become_rgb(mode):
    image = Image.new("RGB", (20, 20), (10, 120, 240)).convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    pixels = ImagePreprocessor(20).decode(encode(image, fmt))
    assert pixels.shape == (3, 20, 20)


def test_sixteen_bit_greyscale_is_windowed_to_its_range_not_clipped():
    array = np.full((16, 16), 1000, dtype=np.uint16)
    array[:, 8:] = 3000  # a CT-like image: all values far above 255
    image = Image.fromarray(array)
    pixels = ImagePreprocessor(16).decode(encode(image))
    assert pixels[0, 0, 0] == 0 and pixels[0, 0, 15] == 255
    assert bool((pixels[0] == pixels[1]).all()) and bool((pixels[1] == pixels[2]).all())


def test_32_bit_integer_mode_is_windowed_too():
    image = Image.fromarray(np.array([[-5, 5], [0, 5]], dtype=np.int32))
    rgb = to_rgb(image)
    assert rgb.mode == "RGB" and rgb.getpixel((0, 0)) == (0, 0, 0) and rgb.getpixel((1, 0)) == (255, 255, 255)


def test_constant_sixteen_bit_image_becomes_black_not_nan():
    image = Image.fromarray(np.full((4, 4), 700, dtype=np.uint16))
    assert to_rgb(image).getpixel((0, 0)) == (0, 0, 0)


def test_normalisation_uses_the_vision_config_mean_and_std():
    vision = get_preset("tiny").vision
    pixels = torch.tensor([0, 255], dtype=torch.uint8).view(1, 1, 2).expand(3, 1, 2)
    out = ImagePreprocessor.for_vision(vision).normalize(pixels)
    assert torch.allclose(out[:, 0, 0], torch.full((3,), -1.0)) and torch.allclose(out[:, 0, 1], torch.ones(3))


def test_jpeg_draft_decodes_large_images_to_the_target_size():
    big = Image.fromarray(np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8))
    data = encode(big, "JPEG")
    fast = ImagePreprocessor(64, jpeg_draft=True).decode(data)
    exact = ImagePreprocessor(64).decode(data)
    assert fast.shape == exact.shape == (3, 64, 64)
    assert float((fast.float() - exact.float()).abs().mean()) < 20


def test_undecodable_bytes_raise():
    with pytest.raises(UnidentifiedImageError):
        ImagePreprocessor(16).decode(b"\x89PNG not really a png")


def test_unknown_resize_mode_is_refused():
    with pytest.raises(ValueError, match="unknown image resize mode 'stretch'"):
        ImagePreprocessor(16, mode="stretch")


def test_real_vqa_rad_radiographs_decode_to_the_tiny_model_size(vqa_rad_dir):
    preprocess = ImagePreprocessor.for_vision(get_preset("tiny").vision, jpeg_draft=True)
    for path in sorted((vqa_rad_dir / "images").iterdir())[:5]:
        pixels = preprocess.decode(path.read_bytes())
        assert pixels.shape == (3, 64, 64) and int(pixels.max()) > int(pixels.min())
