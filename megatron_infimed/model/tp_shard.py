"""A parameter's tensor-parallel piece, as megatron-core lays it out: the one definition used by
initialisation (``model/init.py``) and by checkpoint import (``convert/import_hf.py``).

| layer                                                     | split dim | rank r of n keeps            |
|-----------------------------------------------------------|-----------|------------------------------|
| VocabParallelEmbedding, ColumnParallelLinear (w and b)    | 0         | rows r/n                     |
| RowParallelLinear (weight; its bias is replicated)        | 1         | columns r/n                  |
| SwiGLU linear_fc1 weight: [gate; up] stacked on dim 0     | 0         | [gate rows r/n; up rows r/n] |
| anything else                                             | none      | the whole tensor             |

The SwiGLU row is the one to get wrong: fc1 stacks the gate and up projections, and each rank
must keep its slice of *both* halves. With gate rows ``g0 g1`` and up rows ``u0 u1`` at TP=2, rank 0
keeps ``[g0; u0]``; a plain split of the stack would give it ``[g0; g1]``, all gate and no up.
"""

from __future__ import annotations

import torch
from megatron.core import parallel_state


def partition_dim(module: torch.nn.Module, param_name: str) -> int | None:
    """Tensor-parallel split dimension of ``module.<param_name>``, or None when replicated.

    Read from the layer type: megatron-core sets the ``partition_dim`` attributes only when it
    initialises weights itself, which ``model/init.py`` replaces.
    """
    from megatron.core.tensor_parallel.layers import (
        ColumnParallelLinear,
        RowParallelLinear,
        VocabParallelEmbedding,
    )

    mode = getattr(module, "parallel_mode", None)  # Transformer Engine linears
    if isinstance(module, (VocabParallelEmbedding, ColumnParallelLinear)) or mode == "column":
        return 0 if param_name in ("weight", "bias") else None
    if isinstance(module, RowParallelLinear) or mode == "row":
        return 1 if param_name == "weight" else None
    return None


def split_for_rank(full: torch.Tensor, dim: int | None, rank: int, size: int, *, gated: bool) -> torch.Tensor:
    """Rank ``rank`` of ``size``'s piece of ``full`` (table above); ``gated``: ``full`` is SwiGLU's [gate; up]."""
    if dim is None:
        return full
    if gated:
        gate, up = full.chunk(2, dim=dim)
        return torch.cat([gate.chunk(size, dim=dim)[rank], up.chunk(size, dim=dim)[rank]], dim=dim)
    return full.chunk(size, dim=dim)[rank]


def tp_shard(full: torch.Tensor, dim: int | None, *, gated: bool) -> torch.Tensor:
    """This rank's piece of ``full`` in the current tensor-parallel group."""
    return split_for_rank(full, dim, parallel_state.get_tensor_model_parallel_rank(),
                          parallel_state.get_tensor_model_parallel_world_size(), gated=gated)


def full_shape(shard: torch.Tensor, dim: int | None) -> tuple[int, ...]:
    """The shape of the whole tensor that ``shard`` is this rank's piece of."""
    shape = list(shard.shape)
    if dim is not None:
        shape[dim] *= parallel_state.get_tensor_model_parallel_world_size()
    return tuple(shape)
