"""Samples → one ``Pack``: loss weights, alignment padding, positions, normalised images.

Loss weighting. The training step (``training/step.py:LossAccumulator``) computes
``loss = sum(loss_weights * ce) / normaliser`` where the normaliser is ONE rule for every mode: the
sum of ``loss_weights`` over the whole step (all micro-batches, all data-parallel ranks). This
module only sets the weights. With ``n_i`` the trainable tokens of sample ``i``:

| mode     | weight of each trainable token | normaliser = Σ weights      | loss is                      |
|----------|--------------------------------|-----------------------------|------------------------------|
| token    | 1                              | Σ n_i (trainable tokens)    | mean over tokens             |
| sample   | 1 / n_i                        | number of samples           | mean over samples            |
| square   | 1 / sqrt(n_i) (InternVL 2.5)   | Σ sqrt(n_i)                 | between the two              |

Padding (never trained, weight 0, label IGNORE_INDEX, counted in ``Pack.num_padding``):
- context parallelism (cp > 1): each sample is padded to a multiple of 2×cp (load-balanced CP
  splits each sequence into 2×cp chunks);
- FP8: the pack is padded to a multiple of 16 (32 for the mxfp8 recipe) by extending its LAST
  segment (cu_seqlens[-1] moves, no empty segment appears); positions continue inside the padding.
- sequence parallelism: the pack's length is also a multiple of the tensor-parallel size, which
  splits the sequence. ``pad_multiple`` is the one definition of the pack alignment.

Without packing (``build_padded_batch``) each sample is its own segment padded to the longest one
in the micro-batch, so ``cu_seqlens = [0, L, 2L, ...]``: the same THD model input, but the compute
of a padded [B, L] batch, which is what ``--no-packing`` compares against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from megatron_infimed.data.pack import IGNORE_INDEX, Pack
from megatron_infimed.data.preprocess import Sample

LOSS_WEIGHTINGS = ("token", "sample", "square")
FP8_RECIPES = ("delayed", "tensorwise", "mxfp8", "blockwise")


def pad_multiple(tensor_parallel: int = 1, sequence_parallel: bool = False, context_parallel: int = 1,
                 fp8_recipe: str | None = None) -> int:
    """What every pack length T is a multiple of, from TP × SP × CP × the FP8 recipe. The splits
    nest: CP gives each rank T/cp tokens, SP splits those over the TP ranks, and FP8 GEMMs and casts
    then need each rank's rows aligned:

    | reason                         | each rank's rows are a multiple of | so T is a multiple of |
    |--------------------------------|------------------------------------|-----------------------|
    | context parallelism (cp > 1)   | (every sample: 2 chunks of 2·cp)    | 2·cp, per sample      |
    | sequence parallelism           | 1 (T/cp rows split over tp)        | cp·tp                 |
    | FP8 GEMMs (Transformer Engine) | 16, or 32 for mxfp8                | cp·(tp under SP)·16   |

    ``pad_multiple(tensor_parallel=2, sequence_parallel=True, context_parallel=2, fp8_recipe="mxfp8")``
    is lcm(2·2, 2·2·32) = 128: each of the 4 ranks holds 32 rows.
    """
    if fp8_recipe is not None and fp8_recipe not in FP8_RECIPES:
        raise ValueError(f"unknown FP8 recipe {fp8_recipe!r}; expected one of {FP8_RECIPES}")
    rows = (32 if fp8_recipe == "mxfp8" else 16) if fp8_recipe is not None else 1
    split = context_parallel * (tensor_parallel if sequence_parallel else 1)
    return math.lcm(2 * context_parallel if context_parallel > 1 else 1, split * rows)


@dataclass(frozen=True)
class PackLayout:
    """How a pack is laid out: weighting mode, alignment and pad token."""

    loss_weighting: str = "token"
    context_parallel: int = 1
    fp8_recipe: str | None = None  # None: no FP8; else the recipe, which sets the alignment
    tensor_parallel: int = 1
    sequence_parallel: bool = False
    pad_id: int = 0

    @classmethod
    def of(cls, config, pad_id: int = 0) -> PackLayout:
        """The layout a run's packs need (``config``: a ``RunConfig``): its loss weighting, and the
        alignment its tensor/sequence/context parallelism and FP8 recipe ask for."""
        parallel = config.parallel
        return cls(loss_weighting=config.batch.loss_weighting, context_parallel=parallel.context_parallel_size,
                   fp8_recipe=config.model.fp8_recipe if config.model.fp8 else None,
                   tensor_parallel=parallel.tensor_model_parallel_size,
                   sequence_parallel=parallel.sequence_parallel, pad_id=pad_id)

    def __post_init__(self) -> None:
        if self.loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"unknown loss weighting {self.loss_weighting!r}; expected one of {LOSS_WEIGHTINGS}")
        if self.context_parallel < 1:
            raise ValueError(f"context_parallel must be >= 1, got {self.context_parallel}")

    @property
    def sample_multiple(self) -> int:
        return 2 * self.context_parallel if self.context_parallel > 1 else 1

    @property
    def aligned(self) -> bool:
        """Is the whole pack aligned beyond its samples' own CP multiple (FP8 or SP)?"""
        return self.pack_multiple != self.sample_multiple

    @property
    def pack_multiple(self) -> int:
        """Every pack length is a multiple of this (lcm keeps the extended last segment CP-aligned)."""
        return pad_multiple(self.tensor_parallel, self.sequence_parallel, self.context_parallel, self.fp8_recipe)

    def slots(self, sample_length: int) -> int:
        """Slots a sample occupies in a pack, CP padding included."""
        m = self.sample_multiple
        return -(-sample_length // m) * m

    def capacity(self, seq_length: int) -> int:
        """Usable slots per pack so that the aligned pack still fits in ``seq_length``."""
        cap = seq_length // self.pack_multiple * self.pack_multiple
        if cap <= 0:
            raise ValueError(f"seq_length {seq_length} is smaller than the pack alignment {self.pack_multiple}")
        return cap


def token_weight(num_trainable: int, mode: str) -> float:
    """The weight of each trainable token of a sample with ``num_trainable`` of them (table above)."""
    if mode == "token" or num_trainable == 0:
        return 1.0
    if mode == "sample":
        return 1.0 / num_trainable
    if mode == "square":
        return 1.0 / math.sqrt(num_trainable)
    raise ValueError(f"unknown loss weighting {mode!r}; expected one of {LOSS_WEIGHTINGS}")


def _assemble(samples: list[Sample], layout: PackLayout, segment_length: int | None) -> Pack:
    """Vectorised over the pack: one cat per field, weights and positions from a segment index."""
    if not samples:
        raise ValueError("cannot build a pack from zero samples")
    slots = [segment_length if segment_length is not None else layout.slots(s.length) for s in samples]
    total = sum(slots)
    extra = -total % layout.pack_multiple if layout.aligned else 0
    slots[-1] += extra  # FP8/SP alignment extends the last segment
    ids, labels, padding, start = [], [], [], 0
    for sample, slot in zip(samples, slots):
        ids.append(sample.input_ids)
        labels.append(sample.labels)
        if slot > sample.length:
            ids.append(torch.full((slot - sample.length,), layout.pad_id, dtype=torch.int64))
            labels.append(torch.full((slot - sample.length,), IGNORE_INDEX, dtype=torch.int64))
            padding.append((start + sample.length, start + slot))
        start += slot
    tokens, labels_t = torch.cat(ids), torch.cat(labels)
    lengths = torch.tensor(slots)
    cu = torch.zeros(len(slots) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    segment = torch.repeat_interleave(torch.arange(len(slots)), lengths)
    positions = torch.arange(tokens.numel(), dtype=torch.int64) - cu[:-1].to(torch.int64)[segment]
    trainable = (labels_t != IGNORE_INDEX).to(torch.float32)
    if layout.loss_weighting == "token":
        weights = trainable
    else:
        per_token = torch.tensor([token_weight(s.num_trainable, layout.loss_weighting) for s in samples])
        weights = trainable * per_token[segment]
    pixels = [s.pixels for s in samples if s.num_images]
    # uint8 until the model's device normalises them: 4x less host memory and host-to-device traffic.
    images = torch.cat(pixels) if pixels else torch.empty(0, 3, *samples[0].pixels.shape[2:], dtype=torch.uint8)
    return Pack(tokens=tokens, labels=labels_t, loss_weights=weights, cu_seqlens=cu, position_ids=positions,
                images=images, sample_ids=[s.sample_id for s in samples],
                images_per_sample=[s.num_images for s in samples],
                num_padding=total + extra - sum(s.length for s in samples), padding_ranges=padding)


def build_pack(samples: list[Sample], layout: PackLayout) -> Pack:
    """Samples end to end, one segment each (the packed THD layout)."""
    return _assemble(samples, layout, None)


def build_padded_batch(samples: list[Sample], layout: PackLayout) -> Pack:
    """``--no-packing``: every sample padded to the longest of the micro-batch (one segment each)."""
    longest = max(layout.slots(s.length) for s in samples)
    if layout.aligned:  # align every row instead of extending the last one, so all rows stay equal
        longest = -(-longest // layout.pack_multiple) * layout.pack_multiple
    return _assemble(samples, layout, longest)
