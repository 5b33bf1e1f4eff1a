"""tokens_per_image is the one definition of how many positions an image takes."""

import pytest
import torch

from megatron_infimed.config.presets import get_preset
from megatron_infimed.model.token_reduction import reduce_image_tokens, reduced_channels, tokens_per_image

SIGLIP = get_preset("infimed-1.7b")


@pytest.mark.parametrize("overrides, tokens, channels", [
    ({}, 144, 1152),  # 27×27 = 729 patches pooled to 12×12
    ({"reduction.kind": "none"}, 729, 1152),
    ({"reduction.kind": "pool", "reduction.pooled_grid": 27}, 729, 1152),
])
def test_siglip_token_counts(overrides, tokens, channels):
    config = SIGLIP.with_overrides(overrides)
    assert tokens_per_image(config) == tokens
    assert reduced_channels(config) == channels


def test_pixel_shuffle_quarters_tokens_and_quadruples_channels():
    config = get_preset("tiny").with_overrides({"reduction.kind": "pixel_shuffle"})
    patches = torch.randn(3, 64, 32)  # tiny: 8×8 patches of width 32
    out = reduce_image_tokens(patches, config)
    assert out.shape == (3, tokens_per_image(config), reduced_channels(config)) == (3, 16, 128)


def test_adaptive_pooling_averages_patch_blocks():
    config = get_preset("tiny")  # 8×8 → 4×4: each token averages a 2×2 block
    patches = torch.arange(64, dtype=torch.float).view(1, 64, 1)
    out = reduce_image_tokens(patches, config)
    assert out[0, 0, 0].item() == (0 + 1 + 8 + 9) / 4
    assert out.shape == (1, 16, 1)


def test_shuffle_factor_must_divide_the_grid():
    config = SIGLIP.with_overrides({"reduction.kind": "pixel_shuffle"})  # 27 is odd
    with pytest.raises(ValueError, match="shuffle_factor=2 must divide the patch grid 27"):
        tokens_per_image(config)


def test_unknown_reduction_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown image-token reduction 'maxpool'"):
        tokens_per_image(SIGLIP.with_overrides({"reduction.kind": "maxpool"}))
