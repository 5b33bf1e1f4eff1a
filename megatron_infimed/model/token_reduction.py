"""Image-token reduction: the patch grid of the vision encoder becomes fewer image tokens.

| kind          | tokens per image              | channels out       |
|---------------|-------------------------------|--------------------|
| pool          | pooled_grid² (27² → 12² = 144) | vision hidden      |
| pixel_shuffle | grid² / factor² (×0.25 at 2)  | hidden × factor²   |
| none          | grid² (729)                   | vision hidden      |

``tokens_per_image`` is the one place this count is defined: the packer expands ``<image>`` with
it, the model checks it, the FLOPs formula and the exported model read it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from megatron_infimed.config.presets import ModelConfig, ReductionConfig, VisionConfig

REDUCTION_KINDS = ("pool", "pixel_shuffle", "none")


def _check(reduction: ReductionConfig, vision: VisionConfig) -> None:
    if reduction.kind not in REDUCTION_KINDS:
        raise ValueError(f"unknown image-token reduction '{reduction.kind}'; expected one of {REDUCTION_KINDS}")
    if reduction.kind == "pool" and not 0 < reduction.pooled_grid <= vision.grid_size:
        raise ValueError(f"reduction.pooled_grid={reduction.pooled_grid} must be in 1..{vision.grid_size} "
                         f"(the vision patch grid)")
    if reduction.kind == "pixel_shuffle" and vision.grid_size % reduction.shuffle_factor:
        raise ValueError(f"reduction.shuffle_factor={reduction.shuffle_factor} must divide the patch grid "
                         f"{vision.grid_size}")


def tokens_per_image(config: ModelConfig) -> int:
    """Number of language-model positions one image occupies after reduction."""
    reduction, vision = config.reduction, config.vision
    _check(reduction, vision)
    if reduction.kind == "pool":
        return reduction.pooled_grid**2
    if reduction.kind == "pixel_shuffle":
        return vision.num_patches // reduction.shuffle_factor**2
    return vision.num_patches


def reduced_channels(config: ModelConfig) -> int:
    """Width of each image token as it enters the projector."""
    if config.reduction.kind == "pixel_shuffle":
        return config.vision.hidden_size * config.reduction.shuffle_factor**2
    return config.vision.hidden_size


def reduce_image_tokens(patches: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """[images, grid², C] patch features → [images, tokens_per_image(config), reduced_channels]."""
    reduction, grid = config.reduction, config.vision.grid_size
    _check(reduction, config.vision)
    n, num_patches, channels = patches.shape
    if num_patches != grid * grid:
        raise ValueError(f"expected {grid * grid} patches per image, got {num_patches}")
    if reduction.kind == "none":
        return patches
    square = patches.transpose(1, 2).reshape(n, channels, grid, grid)
    if reduction.kind == "pool":
        pooled = F.adaptive_avg_pool2d(square, reduction.pooled_grid)
        return pooled.flatten(2).transpose(1, 2)
    # Space-to-depth: each factor×factor block of patches becomes one token of factor² × C channels.
    shuffled = F.pixel_unshuffle(square, reduction.shuffle_factor)
    return shuffled.flatten(2).transpose(1, 2)
