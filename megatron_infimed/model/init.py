"""Deterministic, layout-independent initialisation.

megatron-core draws weights from one RNG stream in construction order, so a pipeline stage that
builds layers 3-4 first draws different numbers than a single process building layers 1-4. Here
every parameter is drawn whole from its own generator, seeded by (seed, global parameter name),
and then this rank's tensor-parallel shard is cut out. Same seed → same full weights at TP=1,
TP=2, PP=2 and any mix, so runs can be compared across layouts.

| parameter                                   | init                                    |
|---------------------------------------------|-----------------------------------------|
| norm weights                                | 1                                       |
| biases                                      | 0                                       |
| linear_proj / linear_fc2 weights (residual) | N(0, std / sqrt(2 × num_layers))        |
| every other weight                          | N(0, std)                               |
"""

from __future__ import annotations

import hashlib
import math
import re

import torch

from megatron.core import parallel_state

_LAYER = re.compile(r"^(.*?decoder\.layers\.)(\d+)(\..*)$")


def global_parameter_name(model: torch.nn.Module, name: str) -> str:
    """Replace a stage-local layer index with the layer's global index (``layer_number - 1``)."""
    match = _LAYER.match(name)
    if not match:
        return name
    layer = model.get_submodule(match.group(1) + match.group(2))
    return f"{match.group(1)}{layer.layer_number - 1}{match.group(3)}"


def _seed_for(seed: int, name: str) -> int:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def _full_tensor(name: str, shape: tuple[int, ...], std: float, num_layers: int, seed: int) -> torch.Tensor:
    if name.endswith("bias"):
        return torch.zeros(shape)
    if "norm" in name and name.endswith("weight"):
        return torch.ones(shape)
    if name.endswith(("linear_proj.weight", "linear_fc2.weight")) and "projector" not in name:
        std = std / math.sqrt(2.0 * num_layers)
    generator = torch.Generator().manual_seed(_seed_for(seed, name))
    return torch.randn(shape, generator=generator) * std


def partition_dim(module: torch.nn.Module, param_name: str) -> int | None:
    """Tensor-parallel split dimension of ``module.<param_name>``, or None when replicated.

    Read from the layer type: megatron-core sets the ``partition_dim`` attributes only when it
    initialises weights itself, which this module replaces.
    """
    from megatron.core.tensor_parallel.layers import (
        ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
    )

    mode = getattr(module, "parallel_mode", None)  # Transformer Engine linears
    if isinstance(module, (VocabParallelEmbedding, ColumnParallelLinear)) or mode == "column":
        return 0 if param_name in ("weight", "bias") else None
    if isinstance(module, RowParallelLinear) or mode == "row":
        return 1 if param_name == "weight" else None
    return None


def _shard(full: torch.Tensor, dim: int | None, name: str, gated: bool) -> torch.Tensor:
    """This rank's tensor-parallel piece of ``full``, as megatron-core lays it out."""
    if dim is None:
        return full
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    if gated and name.endswith("mlp.linear_fc1.weight"):
        # SwiGLU fc1 holds [gate; up]; each rank keeps its slice of both halves.
        gate, up = full.chunk(2, dim=dim)
        return torch.cat([gate.chunk(tp_size, dim=dim)[tp_rank], up.chunk(tp_size, dim=dim)[tp_rank]], dim=dim)
    return full.chunk(tp_size, dim=dim)[tp_rank]


def _full_shape(param: torch.Tensor, dim: int | None) -> tuple[int, ...]:
    shape = list(param.shape)
    if dim is not None:
        shape[dim] *= parallel_state.get_tensor_model_parallel_world_size()
    return tuple(shape)


@torch.no_grad()
def initialize_weights(model: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """Set every parameter of ``model`` (one pipeline chunk) from per-name seeds."""
    language = model.model_config.language
    for name, param in model.named_parameters():
        module_name, _, param_name = name.rpartition(".")
        dim = partition_dim(model.get_submodule(module_name), param_name)
        global_name = global_parameter_name(model, name)
        # With tied embeddings the last stage's output layer is a copy of the word embeddings.
        if global_name.endswith("output_layer.weight") and language.tie_word_embeddings:
            global_name = global_name.replace("output_layer.weight", "embedding.word_embeddings.weight")
        is_vision = global_name.startswith("vision_model.")
        num_layers = model.model_config.vision.num_layers if is_vision else language.num_layers
        full = _full_tensor(global_name, _full_shape(param, dim), std, num_layers, seed)
        param.copy_(_shard(full, dim, global_name, gated=not is_vision and "projector" not in global_name))
        # Gradient-norm and checkpoint code read these attributes to tell shards from replicas.
        param.tensor_model_parallel = dim is not None
        param.partition_dim = 0 if dim is None else dim
        param.partition_stride = 1
