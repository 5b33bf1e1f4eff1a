"""Duplicate removal: exact (image bytes + normalised text) and near (perceptual image hash).

| kind  | key                                                              | catches                         |
|-------|------------------------------------------------------------------|---------------------------------|
| exact | sha256 of every image's bytes + normalised text                  | copied files, re-listed records |
| near  | same normalised text, and every image's 256-bit dHash within     | re-encoded, resized or lightly  |
|       | ``near_hamming`` bits and its 8 x 8 mean-colour grid within      | edited copies                   |
|       | ``near_colour`` levels                                           |                                 |

The dHash (signs of horizontal gradients) sees structure but not colour: a red and a blue square
in the same place hash alike, so the colour grid must agree too.

Near duplicates need the same text because VQA data asks many different questions about one
image: those are distinct samples, not duplicates. The first occurrence (in processing order) is
kept, so the result is deterministic.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

from megatron_infimed.curation.record import normalise_text

HASH_SIDE = 16  # a 256-bit difference hash
GRID_SIDE = 8  # an 8 x 8 grid of mean colours


def dhash(gray: np.ndarray, size: int = HASH_SIDE) -> int:
    """Difference hash: 1 bit per horizontally adjacent pair of a (size+1) x size thumbnail."""
    small = np.asarray(Image.fromarray(gray).resize((size + 1, size), Image.Resampling.BILINEAR), dtype=np.int16)
    # A small dead zone keeps flat, noisy regions at 0 instead of random bits.
    bits = (small[:, 1:] > small[:, :-1] + 2).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def colour_grid(thumbnail: np.ndarray) -> list[int]:
    """Mean R, G, B of each cell of a GRID_SIDE x GRID_SIDE grid (grayscale: the value 3 times)."""
    rgb = Image.fromarray(thumbnail).convert("RGB").resize((GRID_SIDE, GRID_SIDE), Image.Resampling.BOX)
    return np.asarray(rgb, dtype=np.int16).flatten().tolist()


def image_signature(thumbnail: np.ndarray) -> list[int]:
    """[dHash of the luminance, *colour grid]: structure from the hash, colour from the grid."""
    gray = thumbnail if thumbnail.ndim == 2 else np.asarray(Image.fromarray(thumbnail).convert("L"))
    return [dhash(gray), *colour_grid(thumbnail)]


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def near(a: list[int], b: list[int], max_bits: int, max_colour: int) -> bool:
    """Hashes within ``max_bits`` and every grid colour within ``max_colour`` levels."""
    return hamming(a[0], b[0]) <= max_bits and max(abs(x - y) for x, y in zip(a[1:], b[1:])) <= max_colour


def sample_hash(image_bytes: list[bytes], text: str) -> str:
    """The exact-duplicate key, also the judge-cache and review key of a sample."""
    digest = hashlib.sha256()
    for data in image_bytes:
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    digest.update(normalise_text(text).encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def text_hash(text: str) -> str:
    return hashlib.sha256(normalise_text(text).encode("utf-8", "surrogatepass")).hexdigest()


class Deduplicator:
    def __init__(self, near_hamming: int = 8, near_colour: int = 16):
        self.near_hamming = near_hamming
        self.near_colour = near_colour
        self.exact: set[str] = set()
        self.by_text: dict[str, list[list[list[int]]]] = {}

    def check(self, exact_key: str, text_key: str, signatures: list[list[int]]) -> str | None:
        """``"duplicate/exact"``, ``"duplicate/near"`` or None (not seen before)."""
        if exact_key in self.exact:
            return "duplicate/exact"
        if signatures:
            for other in self.by_text.get(text_key, ()):
                if len(other) == len(signatures) and all(
                        near(a, b, self.near_hamming, self.near_colour) for a, b in zip(signatures, other)):
                    return "duplicate/near"
        return None

    def add(self, exact_key: str, text_key: str, signatures: list[list[int]]) -> None:
        self.exact.add(exact_key)
        if signatures:
            self.by_text.setdefault(text_key, []).append(signatures)
