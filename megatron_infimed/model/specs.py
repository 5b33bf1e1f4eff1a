"""Layer specs and megatron-core configs for the decoder, the vision encoder and the projector.

Which attention, MLP and norm a layer uses is chosen here, by spec, never by ``if`` inside a layer:

| transformer_impl | decoder layer                                  | vision layer                        |
|------------------|------------------------------------------------|-------------------------------------|
| local            | megatron-core local spec, RMSNorm, QK-RMSNorm,  | local ViT spec made bidirectional,  |
|                  | core attention = PackedDotProductAttention      | PackedDotProductAttention           |
| te               | megatron-core's Transformer Engine GPT spec     | megatron-core's TE ViT spec         |
|                  | (fused THD attention, FP8 recipes)              |                                     |

The local decoder's norms (``TorchNorm``) are torch's RMSNorm, as megatron's ``WrappedTorchNorm``
builds it, but usable with sequence parallelism: megatron refuses SP for its torch-norm wrapper
because it does not mark the weights; here they are marked, so that ``finalize_model_grads``
all-reduces their partial gradients over the tensor-parallel group as it does for TE's norms.
"""

from __future__ import annotations

import copy
import functools

import torch
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlock, TransformerBlockSubmodules

from megatron_infimed.model.packed_attention import PackedDotProductAttention

TRANSFORMER_IMPLS = ("local", "te")
# A local layer's separate pre-norms are stored under the names of TE's fused norm + linear.
TE_NORM_KEYS = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_",
                "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}

@functools.cache
def _check_impl(impl: str) -> None:
    if impl not in TRANSFORMER_IMPLS:
        raise ValueError(f"unknown transformer_impl '{impl}'; expected one of {TRANSFORMER_IMPLS}")
    if impl == "te":
        try:
            import transformer_engine  # noqa: F401
        except ImportError as error:
            raise ImportError("transformer_impl 'te' needs Transformer Engine (pip install "
                              "'megatron-infimed[gpu]'); use 'local' without it") from error


class TorchNorm:
    """torch's LayerNorm or RMSNorm (``config.normalization``) with megatron's norm constructor;
    under sequence parallelism its weights carry ``sequence_parallel`` (see the module docstring)."""

    def __new__(cls, config, hidden_size: int, eps: float = 1e-5, persist_layer_norm: bool = False,
                zero_centered_gamma: bool = False, normalization: str = "LayerNorm"):
        kinds = {"LayerNorm": torch.nn.LayerNorm, "RMSNorm": torch.nn.RMSNorm}
        if config.normalization not in kinds or config.layernorm_zero_centered_gamma:
            raise ValueError(f"TorchNorm builds {sorted(kinds)} without zero-centred gamma, not "
                             f"{config.normalization!r} (zero_centered_gamma={config.layernorm_zero_centered_gamma})")
        norm = kinds[config.normalization](hidden_size, eps=eps)
        for param in norm.parameters():
            param.sequence_parallel = config.sequence_parallel
        return norm


def language_layer_spec(impl: str) -> ModuleSpec:
    _check_impl(impl)
    if impl == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    spec = copy.deepcopy(get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm"))
    attention = spec.submodules.self_attention.submodules
    attention.core_attention = PackedDotProductAttention
    attention.q_layernorm = attention.k_layernorm = TorchNorm
    spec.submodules.input_layernorm = spec.submodules.pre_mlp_layernorm = TorchNorm
    return spec


def language_block_spec(impl: str, config, vp_stage: int | None = None) -> ModuleSpec:
    """The decoder block of this pipeline stage: its layers and, for local layers, a ``TorchNorm``
    final norm (a bare layer spec would get megatron's default final norm, which refuses SP)."""
    layer = language_layer_spec(impl)
    if impl == "te":
        return layer
    from megatron.core.transformer.transformer_block import get_num_layers_to_build
    layers = get_num_layers_to_build(config, vp_stage=vp_stage)
    return ModuleSpec(module=TransformerBlock,
                      submodules=TransformerBlockSubmodules(layer_specs=[layer] * layers, layer_norm=TorchNorm))


def vision_layer_spec(impl: str) -> ModuleSpec:
    _check_impl(impl)
    from megatron.core.models.vision import vit_layer_specs
    if impl == "te":
        return vit_layer_specs.get_vit_layer_with_transformer_engine_spec()
    spec = copy.deepcopy(vit_layer_specs.get_vit_layer_with_local_spec())
    # megatron-core 0.16.1's local ViT spec is causal; a vision encoder must see the whole image.
    spec.submodules.self_attention.params = {"attn_mask_type": AttnMaskType.no_mask}
    spec.submodules.self_attention.submodules.core_attention = PackedDotProductAttention
    # Checkpoint keys as Transformer Engine names them (its linears fuse the pre-norms), so a
    # local-layer checkpoint loads into TE layers and back, as megatron's local GPT spec does.
    spec.submodules.sharded_state_dict_keys_map = dict(TE_NORM_KEYS)
    return spec


def projector_spec(impl: str) -> MLPSubmodules:
    _check_impl(impl)
    from megatron.core.tensor_parallel.layers import ColumnParallelLinear, RowParallelLinear
    if impl == "te":
        from megatron.core.extensions.transformer_engine import TEColumnParallelLinear, TERowParallelLinear
        return MLPSubmodules(linear_fc1=TEColumnParallelLinear, linear_fc2=TERowParallelLinear)
    return MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear)


def vision_norm(impl: str):
    """The norm class for the ViT's post-LN (pre-LN is unused for SigLIP)."""
    _check_impl(impl)
    if impl == "te":
        from megatron.core.extensions.transformer_engine import TENorm
        return TENorm
    from megatron.core.transformer.torch_norm import WrappedTorchNorm
    return WrappedTorchNorm
