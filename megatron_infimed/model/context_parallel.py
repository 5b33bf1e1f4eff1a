"""Context parallelism (CP) for packed multimodal sequences: which tokens a CP rank holds, the vision
work divided over the CP group, and exact causal attention over K/V gathered from the group (the
``local`` layers' CP attention).

Each sample of a pack is padded (by the loader, ``PackLayout``) to a multiple of 2N, cut into 2N
equal chunks, and rank i keeps chunks i and 2N−1−i, so that under a causal mask every rank does
the same work (the layout of Transformer Engine's ``thd_get_partitioned_indices`` and of
megatron-core's THD RoPE, which derive the positions of a rank's tokens from it)::

    sample of 8 tokens, N = 2:   chunk  0    1    2    3
                                        ab   cd   ef   gh
    rank 0 holds a b g h    rank 1 holds c d e f

Images are encoded before the split: the vision tower runs at CP=1 on 1/N of the pack's images
on each rank, the embeddings are all-gathered, written over the whole sequence's image positions,
and only then does each rank keep its tokens. The gathers are autograd functions whose backward
reduce-scatters, so every image and every K/V row gets the gradient of every rank's loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region
from torch import Tensor


def chunk_positions(bounds: list[int], size: int, rank: int) -> list[int]:
    """Global positions of ``rank``'s tokens, sample by sample (``bounds``: the padded cu_seqlens
    as a list): chunk ``rank`` of each sample, then chunk ``2·size − 1 − rank``."""
    positions: list[int] = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if (end - start) % (2 * size):
            raise ValueError(f"segment [{start}, {end}) of {end - start} tokens is not a multiple of 2 × context-"
                             f"parallel size {size}: the pack was not built for CP={size}")
        chunk = (end - start) // (2 * size)
        positions += range(start + rank * chunk, start + (rank + 1) * chunk)
        positions += range(start + (2 * size - 1 - rank) * chunk, start + (2 * size - rank) * chunk)
    return positions


@dataclass(frozen=True)
class ContextShard:
    """This rank's share of one packed micro-batch under CP: ``index`` [T/N] holds the global
    positions of its tokens, in the order the rank lays them out; ``order`` [T] puts the group's
    tokens, gathered rank after rank, back in sequence order."""

    group: torch.distributed.ProcessGroup
    size: int
    rank: int
    bounds: tuple[int, ...]
    index: Tensor
    order: Tensor

    @classmethod
    def of(cls, bounds: list[int], group, device: torch.device) -> ContextShard:
        size, rank = group.size(), group.rank()
        held = [chunk_positions(bounds, size, r) for r in range(size)]
        gathered = torch.tensor([p for positions in held for p in positions], dtype=torch.long, device=device)
        return cls(group, size, rank, tuple(bounds), torch.tensor(held[rank], dtype=torch.long, device=device),
                   torch.argsort(gathered))

    def take(self, tensor: Tensor, dim: int = -1) -> Tensor:
        """This rank's tokens of a full-sequence tensor (sequence along ``dim``)."""
        return tensor.index_select(dim, self.index)

    def gather_images(self, images: Tensor, encode, rows: int, width: int, dtype: torch.dtype,
                      trainable: bool) -> Tensor:
        """``encode`` ([k, 3, H, W] → [k·rows, width]) applied to every image of the pack, the work
        divided over the CP group: rank r encodes images [r·q, (r+1)·q), q = ⌈K/N⌉, and the results
        are all-gathered: [K·rows, width] on every rank. A rank short of q images fills the rest
        with zero rows; ``trainable`` (the encoder learns) makes a rank without images take part in
        the gather's backward too, a collective the other ranks run."""
        count = images.shape[0]
        per_rank = -(-count // self.size)
        mine = images[self.rank * per_rank:(self.rank + 1) * per_rank]
        missing = (per_rank - mine.shape[0]) * rows
        filler = torch.zeros(missing, width, dtype=dtype, device=images.device,
                             requires_grad=trainable and not mine.shape[0])
        local = torch.cat([encode(mine).to(dtype), filler]) if mine.shape[0] else filler
        gathered = gather_from_sequence_parallel_region(local, tensor_parallel_output_grad=True, group=self.group)
        return gathered[:count * rows]


def gather_sequence(tensor: Tensor, shard: ContextShard) -> Tensor:
    """The whole sequence of ``tensor`` [T/N, ...] (each rank's tokens) in global order: an
    all-gather over the CP group whose backward reduce-scatters the gradient to its owner."""
    gathered = gather_from_sequence_parallel_region(tensor, tensor_parallel_output_grad=True, group=shard.group)
    return gathered.index_select(0, shard.order)


def attention(query: Tensor, key: Tensor, value: Tensor, shard: ContextShard, causal: bool, scale: float) -> Tensor:
    """Exact THD attention for this rank's queries [T/N, np, hn] against every key of their sample:
    K/V are all-gathered over the CP group and each query attends causally by its global position.
    O(Σ lᵢ²/N) work per rank as with ring attention, but each rank holds the group's whole K/V."""
    keys, values = gather_sequence(key, shard), gather_sequence(value, shard)
    positions = shard.index
    local = [0]
    bounds = shard.bounds
    for start, end in zip(bounds[:-1], bounds[1:]):
        local.append(local[-1] + (end - start) // shard.size)
    gqa = query.shape[1] != key.shape[1]
    outputs = []
    for i, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        q = query[local[i]:local[i + 1]].transpose(0, 1).unsqueeze(0)
        k = keys[start:end].transpose(0, 1).unsqueeze(0)
        v = values[start:end].transpose(0, 1).unsqueeze(0)
        mask = None
        if causal:  # True where attention is allowed: keys at or before the query's position
            mask = torch.arange(start, end, device=q.device)[None, :] <= positions[local[i]:local[i + 1], None]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)
        outputs.append(out.squeeze(0).transpose(0, 1))
    return torch.cat(outputs, dim=0)
