"""Deterministic, layout-independent initialisation.

megatron-core draws weights from one RNG stream in construction order, so a pipeline stage that
builds layers 3-4 first draws different numbers than a single process building layers 1-4. Here
every parameter is drawn whole from its own generator, seeded by (seed, global parameter name),
and then this rank's tensor-parallel shard is cut out (``model/tp_shard.py``, which checkpoint import
uses too). Same seed → same full weights at TP=1, TP=2, PP=2 and any mix, so runs can be compared
across layouts.

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

from megatron_infimed.model.tp_shard import full_shape, partition_dim, tp_shard

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
        full = _full_tensor(global_name, full_shape(param, dim), std, num_layers, seed)
        gated = not is_vision and "projector" not in global_name and global_name.endswith("mlp.linear_fc1.weight")
        param.copy_(tp_shard(full, dim, gated=gated))
        # Gradient-norm and checkpoint code read these attributes to tell shards from replicas.
        param.tensor_model_parallel = dim is not None
        param.partition_dim = 0 if dim is None else dim
        param.partition_stride = 1
