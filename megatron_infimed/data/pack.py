"""``Pack``: the contract between the data loader and the training step.

One pack is one micro-batch in THD layout: several samples laid end to end in a single sequence
of ``T`` tokens, their boundaries in ``cu_seqlens``. At the model's door it becomes megatron-core's
``PackedSeqParams(qkv_format="thd")``.

Labels are already shifted per sample (``labels[i]`` is the token that follows ``tokens[i]``
inside the same sample), so a label never crosses a sample boundary: the last position of each
sample, image positions, padding and non-assistant text carry ``IGNORE_INDEX`` and weight 0.

Example with two samples of lengths 3 and 2 (``I`` = IGNORE_INDEX)::

    tokens       = [a0 a1 a2 b0 b1]
    labels       = [a1 a2 I  b1 I ]
    position_ids = [0  1  2  0  1 ]
    cu_seqlens   = [0, 3, 5]
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch

IGNORE_INDEX = -100
# The tensor fields of a Pack, in declaration order (the rest is per-sample metadata).
TENSOR_FIELDS = ("tokens", "labels", "loss_weights", "cu_seqlens", "position_ids", "images")


@dataclass
class Pack:
    tokens: torch.Tensor  # [T] int64
    labels: torch.Tensor  # [T] int64, IGNORE_INDEX where no loss
    loss_weights: torch.Tensor  # [T] float32, 0 where labels == IGNORE_INDEX
    cu_seqlens: torch.Tensor  # [S + 1] int32, cu_seqlens[-1] == T
    position_ids: torch.Tensor  # [T] int64, restarting at 0 for each sample
    images: torch.Tensor  # [K, 3, H, W] uint8 pixels, in order of appearance (the model normalises them)
    sample_ids: list[str] = field(default_factory=list)  # one per segment that is a sample
    images_per_sample: list[int] = field(default_factory=list)  # aligned with sample_ids
    # Slots that hold no sample (alignment padding folded into the last segment, or a trailing
    # padding segment); real tokens = T - num_padding.
    num_padding: int = 0
    # Where those slots lie: [start, end) ranges. The model zeroes their embeddings, so that no
    # arbitrary pad-token vector reaches normalisation statistics or FP8 amax histories.
    padding_ranges: list[tuple[int, int]] = field(default_factory=list)
    # Read before the tensors leave the host (``to``), so that reading them on a GPU costs no
    # device-to-host sync per micro-batch: the longest segment, the segments holding samples, and
    # the segment boundaries (context parallelism splits every segment by them).
    _max_seqlen: int | None = field(default=None, init=False, repr=False, compare=False)
    _sample_lengths: list[int] | None = field(default=None, init=False, repr=False, compare=False)
    _bounds: list[int] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.numel())

    @property
    def num_real_tokens(self) -> int:
        return self.num_tokens - self.num_padding

    @property
    def max_seqlen(self) -> int:
        if self._max_seqlen is None:
            self._max_seqlen = int((self.cu_seqlens[1:] - self.cu_seqlens[:-1]).max().item())
        return self._max_seqlen

    @property
    def sample_lengths(self) -> list[int]:
        """Lengths of the segments that hold a sample (padding segments left out). A segment holds
        a sample when one of its labels is trained: padding never is, and the loader drops a sample
        without a trained label. ``cu_seqlens = [0, 300, 500, 512]`` with trained labels in the first
        two segments gives ``[300, 200]``."""
        if self._sample_lengths is None:
            cu = self.cu_seqlens.long()
            trained_before = torch.nn.functional.pad((self.labels != IGNORE_INDEX).long().cumsum(0), (1, 0))
            has_sample = trained_before[cu[1:]] > trained_before[cu[:-1]]
            self._sample_lengths = (cu[1:] - cu[:-1])[has_sample].tolist()
        return self._sample_lengths

    @property
    def bounds(self) -> list[int]:
        """``cu_seqlens`` as a list."""
        if self._bounds is None:
            self._bounds = self.cu_seqlens.tolist()
        return self._bounds

    def host_facts(self) -> tuple[int, list[int], list[int]]:
        """What the pack knows on the host (read once, then carried to other devices and ranks)."""
        return self.max_seqlen, self.sample_lengths, self.bounds

    def with_host_facts(self, facts: tuple[int, list[int], list[int]]) -> Pack:
        """Set ``host_facts`` taken from the same pack elsewhere; returns self."""
        self._max_seqlen, self._sample_lengths, self._bounds = facts
        return self

    def validate(self) -> None:
        """Raise ValueError naming the first broken invariant."""
        t = self.num_tokens
        for name in ("labels", "loss_weights", "position_ids"):
            if getattr(self, name).shape != (t,):
                raise ValueError(f"Pack.{name} has shape {tuple(getattr(self, name).shape)}, expected ({t},)")
        cu = self.cu_seqlens.tolist()
        if cu[0] != 0 or cu[-1] != t or any(b <= a for a, b in zip(cu, cu[1:])):
            raise ValueError(f"Pack.cu_seqlens {cu} must rise strictly from 0 to {t}")
        if len(self.sample_ids) != len(self.images_per_sample):
            raise ValueError("Pack.sample_ids and Pack.images_per_sample differ in length")
        if sum(end - start for start, end in self.padding_ranges) != self.num_padding or any(
                not 0 <= start < end <= t for start, end in self.padding_ranges):
            raise ValueError(f"Pack.padding_ranges {self.padding_ranges} must lie in [0, {t}) and cover the "
                             f"{self.num_padding} padding slots")
        if sum(self.images_per_sample) != self.images.shape[0]:
            raise ValueError(f"Pack holds {self.images.shape[0]} images but images_per_sample sums to "
                             f"{sum(self.images_per_sample)}")

    def to(self, device: torch.device | str) -> Pack:
        """The same pack with its tensors on ``device`` (metadata shared, ``max_seqlen`` included)."""
        device = torch.device(device)
        pin = device.type == "cuda"  # page-locked host memory lets the copy run asynchronously
        moved = replace(self, **{name: (getattr(self, name).pin_memory() if pin else getattr(self, name))
                                 .to(device, non_blocking=pin) for name in TENSOR_FIELDS})
        return moved.with_host_facts(self.host_facts())

    @staticmethod
    def concat(packs: list[Pack]) -> Pack:
        """Lay several packs end to end as one THD micro-batch (attention stays per segment)."""
        if len(packs) == 1:
            return packs[0]
        offsets, cu, padding = 0, [torch.zeros(1, dtype=torch.int32)], []
        for p in packs:
            cu.append(p.cu_seqlens[1:] + offsets)
            padding += [(start + offsets, end + offsets) for start, end in p.padding_ranges]
            offsets += p.num_tokens
        return Pack(
            tokens=torch.cat([p.tokens for p in packs]),
            labels=torch.cat([p.labels for p in packs]),
            loss_weights=torch.cat([p.loss_weights for p in packs]),
            cu_seqlens=torch.cat(cu).to(torch.int32),
            position_ids=torch.cat([p.position_ids for p in packs]),
            images=torch.cat([p.images for p in packs]),
            sample_ids=[s for p in packs for s in p.sample_ids],
            images_per_sample=[n for p in packs for n in p.images_per_sample],
            num_padding=sum(p.num_padding for p in packs), padding_ranges=padding,
        )

    def padded_to(self, length: int, pad_id: int) -> Pack:
        """Append one padding segment so the pack holds exactly ``length`` slots (pipeline stages
        exchange fixed shapes). The padding attends only to itself and carries no loss."""
        extra = length - self.num_tokens
        if extra < 0:
            raise ValueError(f"pack of {self.num_tokens} tokens does not fit in {length} slots "
                             f"(samples {self.sample_ids})")
        if extra == 0:
            return self
        return Pack(
            tokens=torch.cat([self.tokens, torch.full((extra,), pad_id, dtype=self.tokens.dtype)]),
            labels=torch.cat([self.labels, torch.full((extra,), IGNORE_INDEX, dtype=self.labels.dtype)]),
            loss_weights=torch.cat([self.loss_weights, torch.zeros(extra, dtype=self.loss_weights.dtype)]),
            cu_seqlens=torch.cat([self.cu_seqlens, torch.tensor([length], dtype=self.cu_seqlens.dtype)]),
            position_ids=torch.cat([self.position_ids, torch.arange(extra, dtype=self.position_ids.dtype)]),
            images=self.images,
            sample_ids=list(self.sample_ids),
            images_per_sample=list(self.images_per_sample),
            num_padding=self.num_padding + extra,
            padding_ranges=[*self.padding_ranges, (self.num_tokens, length)],
        )
