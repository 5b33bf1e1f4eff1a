"""The shipped length mix of medical multimodal samples, as the benchmarks draw from it.

``data/length_mix.json`` is recorded by ``record_length_mix`` (its docstring says what each
component is and which one is parametric rather than measured). A draw picks a component by its
weight, then one recorded sample of it, and expands its images at ``tokens_per_image``::

    >>> draw_samples(3, seq_length=4096, tokens_per_image=144, seed=0)   # doctest: +SKIP
    [MixSample(text_tokens=19, images=1), ...]    # .length(144) == 163

A sample longer than ``seq_length`` keeps its images and loses text (as the loader's ``truncate``
policy does); one whose images alone do not fit keeps as many images as fit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

MIX_FILE = Path(__file__).parent / "data" / "length_mix.json"


@dataclass(frozen=True, slots=True)
class MixSample:
    text_tokens: int
    images: int

    def length(self, tokens_per_image: int) -> int:
        return self.text_tokens + self.images * tokens_per_image


@cache
def load_mix(path: str = str(MIX_FILE)) -> dict:
    mix = json.loads(Path(path).read_text())
    for c in mix["components"]:
        if not c["samples"] or c["weight"] < 0:
            raise ValueError(f"length mix {path}: component {c['name']!r} needs samples and a weight >= 0")
    return mix


def fit(sample: MixSample, seq_length: int, tokens_per_image: int) -> MixSample:
    images = min(sample.images, (seq_length - 1) // tokens_per_image) if tokens_per_image else sample.images
    text = max(1, min(sample.text_tokens, seq_length - images * tokens_per_image))
    return MixSample(text, images)


def draw_samples(n: int, seq_length: int, tokens_per_image: int = 144, seed: int = 0,
                 path: str = str(MIX_FILE)) -> list[MixSample]:
    """``n`` samples drawn from the mix (seeded), each fitted to ``seq_length``."""
    components = load_mix(path)["components"]
    weights = np.array([c["weight"] for c in components], dtype=np.float64)
    rng = np.random.default_rng(seed)
    which = rng.choice(len(components), size=n, p=weights / weights.sum())
    out = []
    for k in which:
        samples = components[k]["samples"]
        text, images = samples[int(rng.integers(len(samples)))]
        out.append(fit(MixSample(int(text), int(images)), seq_length, tokens_per_image))
    return out


def draw_lengths(n: int, seq_length: int, tokens_per_image: int = 144, seed: int = 0) -> list[int]:
    return [s.length(tokens_per_image) for s in draw_samples(n, seq_length, tokens_per_image, seed)]
