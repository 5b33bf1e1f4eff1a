"""Layer specs and megatron-core configs for the decoder, the vision encoder and the projector.

Which attention, MLP and norm a layer uses is chosen here, by spec, never by ``if`` inside a layer:

| transformer_impl | decoder layer                                  | vision layer                        |
|------------------|------------------------------------------------|-------------------------------------|
| local            | megatron-core local spec, RMSNorm, QK-RMSNorm,  | local ViT spec made bidirectional,  |
|                  | core attention = PackedDotProductAttention      | PackedDotProductAttention           |
| te               | megatron-core's Transformer Engine GPT spec     | megatron-core's TE ViT spec         |
|                  | (fused THD attention, FP8 recipes)              |                                     |
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import torch
import torch.nn.functional as F

from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.mlp import MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_config import TransformerConfig

from megatron_infimed.config.presets import ModelConfig
from megatron_infimed.config.run import ParallelConfig
from megatron_infimed.model.packed_attention import PackedDotProductAttention
from megatron_infimed.runtime import cpu_backend

TRANSFORMER_IMPLS = ("local", "te")

# Settings that keep megatron-core off fused CUDA kernels; the TE path turns the useful ones back on.
_PORTABLE = dict(
    hidden_dropout=0.0, attention_dropout=0.0, bias_activation_fusion=False, bias_dropout_fusion=False,
    apply_rope_fusion=False, masked_softmax_fusion=False, gradient_accumulation_fusion=False,
    persist_layer_norm=False, cross_entropy_loss_fusion=False,
)


@functools.lru_cache(maxsize=None)
def _check_impl(impl: str) -> None:
    if impl not in TRANSFORMER_IMPLS:
        raise ValueError(f"unknown transformer_impl '{impl}'; expected one of {TRANSFORMER_IMPLS}")
    if impl == "te":
        try:
            import transformer_engine  # noqa: F401
        except ImportError as error:
            raise ImportError("transformer_impl 'te' needs Transformer Engine (pip install "
                              "'megatron-infimed[gpu]'); use 'local' without it") from error


def language_transformer_config(config: ModelConfig, parallel: ParallelConfig, dtype: torch.dtype) -> TransformerConfig:
    lang = config.language
    return TransformerConfig(
        num_layers=lang.num_layers, hidden_size=lang.hidden_size, ffn_hidden_size=lang.ffn_hidden_size,
        num_attention_heads=lang.num_attention_heads, num_query_groups=lang.num_query_groups,
        kv_channels=lang.kv_channels, normalization="RMSNorm", layernorm_epsilon=lang.norm_epsilon,
        qk_layernorm=True, gated_linear_unit=True, activation_func=F.silu,
        add_bias_linear=False, add_qkv_bias=False,
        **_common(parallel, dtype),
    )


def vision_transformer_config(config: ModelConfig, parallel: ParallelConfig, dtype: torch.dtype) -> TransformerConfig:
    vis = config.vision
    parallel = _first_stage_only(parallel)
    return TransformerConfig(
        num_layers=vis.num_layers, hidden_size=vis.hidden_size, ffn_hidden_size=vis.ffn_hidden_size,
        num_attention_heads=vis.num_attention_heads, kv_channels=vis.hidden_size // vis.num_attention_heads,
        normalization="LayerNorm", layernorm_epsilon=vis.norm_epsilon,
        # SigLIP's MLP uses the tanh approximation of GELU.
        activation_func=functools.partial(F.gelu, approximate="tanh"),
        add_bias_linear=True, add_qkv_bias=True, gated_linear_unit=False,
        **_common(parallel, dtype),
    )


def projector_transformer_config(config: ModelConfig, parallel: ParallelConfig,
                                 dtype: torch.dtype) -> TransformerConfig:
    parallel = _first_stage_only(parallel)
    return TransformerConfig(
        num_layers=1, hidden_size=config.language.hidden_size,
        ffn_hidden_size=config.projector_hidden_size or config.language.hidden_size,
        # No attention in a projector; heads only has to divide by the tensor-parallel size.
        num_attention_heads=parallel.tensor_model_parallel_size,
        activation_func=F.gelu, add_bias_linear=True, gated_linear_unit=False,
        **_common(parallel, dtype),
    )


def _first_stage_only(parallel: ParallelConfig) -> ParallelConfig:
    """The vision encoder and the projector live whole on the first pipeline stage."""
    return dataclasses.replace(parallel, pipeline_model_parallel_size=1, virtual_pipeline_model_parallel_size=None)


def _common(parallel: ParallelConfig, dtype: torch.dtype) -> dict:
    return dict(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size,
        params_dtype=dtype, pipeline_dtype=dtype, bf16=dtype == torch.bfloat16,
        # Weights are created whole on the CPU and then sharded, so they do not depend on the
        # layout; model.init then sets them from per-name seeds.
        use_cpu_initialization=True, perform_initialization=False,
        calculate_per_token_loss=True,
        recompute_granularity=parallel.recompute_granularity,
        recompute_method=parallel.recompute_method,
        recompute_num_layers=parallel.recompute_num_layers,
        **_PORTABLE,
        **cpu_backend.config_overrides(),
    )


def language_layer_spec(impl: str) -> ModuleSpec:
    _check_impl(impl)
    if impl == "te":
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=True)
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
    spec = copy.deepcopy(get_gpt_layer_local_spec(qk_layernorm=True, normalization="RMSNorm"))
    spec.submodules.self_attention.submodules.core_attention = PackedDotProductAttention
    return spec


def vision_layer_spec(impl: str) -> ModuleSpec:
    _check_impl(impl)
    from megatron.core.models.vision import vit_layer_specs
    if impl == "te":
        return vit_layer_specs.get_vit_layer_with_transformer_engine_spec()
    spec = copy.deepcopy(vit_layer_specs.get_vit_layer_with_local_spec())
    # megatron-core 0.16.1's local ViT spec is causal; a vision encoder must see the whole image.
    spec.submodules.self_attention.params = {"attn_mask_type": AttnMaskType.no_mask}
    spec.submodules.self_attention.submodules.core_attention = PackedDotProductAttention
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
