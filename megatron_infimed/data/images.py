"""Image preprocessing: stored bytes → a square uint8 tensor at the encoder's size → normalised floats.

| mode             | what happens                                 | keeps                  |
|------------------|----------------------------------------------|------------------------|
| ``pad`` (default)| scale the long side to size, pad the rest    | the whole image        |
| ``crop``         | scale the short side to size, centre crop    | the centre, no padding |

Padding uses the mean colour, which normalises to 0. Pixels stay uint8 until the pack is built
(4x less memory in the packing buffer); ``normalize_images`` applies the vision config's mean/std.
Medical images often arrive as 16-bit greyscale (``I;16``/``I``/``F``): they are windowed to their
own min..max range before the RGB conversion, because a plain ``convert("L")`` clips them to white.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from megatron_infimed.config.presets import VisionConfig
from megatron_infimed.model.pixels import normalize_images

RESIZE_MODES = ("pad", "crop")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode → RGB; high-bit-depth greyscale is min-max windowed to 8 bits first."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        lo, hi = float(array.min()), float(array.max())
        scaled = (array - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # a palette with transparency converts cleanly only via RGBA
    return image if image.mode == "RGB" else image.convert("RGB")


@dataclass(frozen=True)
class ImagePreprocessor:
    image_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    mode: str = "pad"
    # PIL's JPEG draft mode decodes at a power-of-two reduction when the stored image is much
    # larger than needed: several times faster, slightly different pixels.
    jpeg_draft: bool = False

    def __post_init__(self) -> None:
        if self.mode not in RESIZE_MODES:
            raise ValueError(f"unknown image resize mode {self.mode!r}; expected one of {RESIZE_MODES}")

    @classmethod
    def for_vision(cls, vision: VisionConfig, mode: str = "pad", jpeg_draft: bool = False) -> ImagePreprocessor:
        return cls(vision.image_size, tuple(vision.image_mean), tuple(vision.image_std), mode, jpeg_draft)

    def decode(self, data: bytes) -> torch.Tensor:
        """Encoded image bytes → uint8 [3, size, size]; raises on undecodable data."""
        image = Image.open(io.BytesIO(data))
        if self.jpeg_draft and image.format == "JPEG":
            image.draft("RGB", (self.image_size, self.image_size))
        image.load()
        return self.to_tensor(image)

    def to_tensor(self, image: Image.Image) -> torch.Tensor:
        image = to_rgb(image)
        size = self.image_size
        if image.size != (size, size):  # fast path: stored at the right size already
            image = self._fit(image)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()

    def _fit(self, image: Image.Image) -> Image.Image:
        size, (w, h) = self.image_size, image.size
        if self.mode == "crop":
            scale = size / min(w, h)
            nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
            image = image.resize((nw, nh), Image.Resampling.BICUBIC)
            left, top = (nw - size) // 2, (nh - size) // 2
            return image.crop((left, top, left + size, top + size))
        scale = size / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        fill = tuple(round(m * 255) for m in self.mean)
        canvas = Image.new("RGB", (size, size), fill)
        canvas.paste(image.resize((nw, nh), Image.Resampling.BICUBIC), ((size - nw) // 2, (size - nh) // 2))
        return canvas

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        return normalize_images(pixels, self.mean, self.std)
