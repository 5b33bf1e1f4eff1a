"""Pixel normalisation: the one definition the model (on its device, for training's uint8 packs)
and the host-side preprocessing (generation, the exported processor's reference) share."""

from __future__ import annotations

import torch


def normalize_images(pixels: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 [..., 3, H, W] → float32 ``(x / 255 - mean) / std`` per channel, on the pixels' device,
    computed as one conversion and an in-place multiply-add (``x · 1/(255·std) - mean/std``): one
    pass over the pixels instead of four, equal within 2e-7."""
    m = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    return pixels.to(torch.float32, copy=True).mul_(1.0 / (255.0 * s)).add_(-m / s)  # never the caller's tensor
