"""Image quality rules: minimum resolution, blank or near-constant content, sane aspect ratio.

Decodability and decompression bombs are checked earlier, at load time (``load/...`` reasons),
because an image that cannot be decoded has nothing to score. Score = the worst issue:

| issue          | test (any image of the sample)                  | score |
|----------------|-------------------------------------------------|-------|
| blank          | grayscale std < ``min_std`` (0-255 scale)       | 0.0   |
| too_small      | shorter side < ``min_side`` pixels              | 0.1   |
| extreme_aspect | longer / shorter side > ``max_aspect``          | 0.3   |

A text-only sample (no image) scores 1.0: there is nothing wrong with its images.
"""

from __future__ import annotations

from megatron_infimed.curation.images import LoadedImage
from megatron_infimed.curation.quality import DimensionScore, penalties_to_score
from megatron_infimed.curation.record import Record


class ImageQualityScorer:
    def __init__(self, min_side: int = 32, max_aspect: float = 6.0, min_std: float = 4.0):
        self.min_side = min_side
        self.max_aspect = max_aspect
        self.min_std = min_std

    def score(self, record: Record, images: list[LoadedImage]) -> DimensionScore:
        penalties: dict[str, float] = {}
        for image in images:
            width, height = image.size
            if float(image.gray.std()) < self.min_std:
                penalties["blank"] = 0.0
            if min(width, height) < self.min_side:
                penalties["too_small"] = 0.1
            if max(width, height) / max(min(width, height), 1) > self.max_aspect:
                penalties["extreme_aspect"] = 0.3
        return penalties_to_score(penalties)
