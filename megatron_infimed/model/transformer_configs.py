"""The megatron-core ``TransformerConfig`` of each part: dimensions from the preset, then the
settings that decide what runs, chosen for a ``Target`` (device and layer implementation).

| setting                      | CPU backend | CUDA, local layers       | CUDA, Transformer Engine        |
|------------------------------|-------------|--------------------------|---------------------------------|
| RoPE fusion                  | off         | off (needs TE's kernel)  | on (THD fused RoPE)             |
| bias + activation fusion     | off         | on (decoder SwiGLU; ViT tanh-GELU) | on                    |
| bias + dropout fusion        | off         | on                       | on                              |
| gradient-accumulation fusion | off         | off (needs Apex)         | on (TE's wgrad into main_grad)  |
| cross-entropy fusion         | off         | on, ``native``           | on, ``te``                      |
| FP8 (``--fp8``)              | never       | never                    | the language model; the ViT and |
|                              |             |                          | projector only where FP8-safe   |

The projector keeps its exact GELU unfused everywhere: megatron's fused bias-GELU is the tanh
approximation, which would change the exported model's numbers (SigLIP's own MLP is tanh-GELU,
so fusing the ViT's is exact). The settings are returned as plain dicts (``*_kwargs``) so the
dry run can show the GPU choices on a machine without CUDA or Transformer Engine.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from megatron_infimed.config.presets import ModelConfig
from megatron_infimed.config.run import ModelSection, ParallelConfig
from megatron_infimed.model.token_reduction import reduced_channels, tokens_per_image
from megatron_infimed.runtime import cpu_backend


@dataclass(frozen=True)
class Target:
    """What the configs are built for: ``cuda`` turns the fusions on, ``te`` the TE-only ones."""

    device: str = "cpu"
    impl: str = "local"

    @classmethod
    def here(cls, impl: str = "local") -> Target:
        return cls("cuda" if torch.cuda.is_available() else "cpu", impl)


@dataclass(frozen=True)
class Fp8:
    """The FP8 settings of ``--fp8`` (megatron's names), for the parts whose shapes allow them."""

    fp8: str
    fp8_recipe: str = "delayed"
    fp8_amax_history_len: int = 1024
    fp8_amax_compute_algo: str = "max"

    @classmethod
    def of(cls, model: ModelSection) -> Fp8 | None:
        if not model.fp8:
            return None
        return cls(model.fp8, model.fp8_recipe, model.fp8_amax_history_len, model.fp8_amax_compute_algo)

    @property
    def alignment(self) -> int:
        """TE's FP8 GEMMs need every dimension, token rows included, to be a multiple of this."""
        return 32 if self.fp8_recipe == "mxfp8" else 16


def fusions(target: Target, fused_activation: bool = True) -> dict:
    if target.device != "cuda":
        return dict(bias_activation_fusion=False, bias_dropout_fusion=False, apply_rope_fusion=False,
                    gradient_accumulation_fusion=False, cross_entropy_loss_fusion=False)
    te = target.impl == "te"
    return dict(bias_activation_fusion=fused_activation, bias_dropout_fusion=True, apply_rope_fusion=te,
                gradient_accumulation_fusion=te, cross_entropy_loss_fusion=True,
                cross_entropy_fusion_impl="te" if te else "native")


def fp8_safe(rows_per_image: int, widths: tuple[int, ...], fp8: Fp8) -> str | None:
    """Why a part must stay in bf16 under ``fp8`` (None when every GEMM shape is aligned). A pack
    holds any number K of images, so the rows (rows_per_image × K) are aligned for every K only
    when ``rows_per_image`` itself is."""
    align = fp8.alignment
    if rows_per_image % align:
        return f"{rows_per_image} rows per image is not a multiple of {align}"
    odd = [w for w in widths if w % align]
    return f"GEMM width(s) {odd} not a multiple of {align}" if odd else None


def vision_fp8_reason(config: ModelConfig, parallel: ParallelConfig, fp8: Fp8) -> str | None:
    vis, tp = config.vision, parallel.tensor_model_parallel_size
    return fp8_safe(vis.grid_size ** 2, (vis.hidden_size, 3 * vis.hidden_size // tp, vis.ffn_hidden_size // tp), fp8)


def projector_fp8_reason(config: ModelConfig, parallel: ParallelConfig, fp8: Fp8) -> str | None:
    hidden, tp = config.projector_hidden_size or config.language.hidden_size, parallel.tensor_model_parallel_size
    return fp8_safe(tokens_per_image(config), (reduced_channels(config), hidden // tp, config.language.hidden_size),
                    fp8)


def _first_stage_only(parallel: ParallelConfig) -> ParallelConfig:
    """The vision encoder and the projector live whole on the first pipeline stage. They see whole
    images, never a slice of the sequence: no context parallelism (the CP ranks divide the images
    among themselves instead, ``model/context_parallel.py``) and no sequence parallelism (the image
    embeddings join the full sequence before it is scattered)."""
    return dataclasses.replace(parallel, pipeline_model_parallel_size=1, virtual_pipeline_model_parallel_size=None,
                               context_parallel_size=1, sequence_parallel=False)


def _common(parallel: ParallelConfig, dtype: torch.dtype) -> dict:
    return dict(
        tensor_model_parallel_size=parallel.tensor_model_parallel_size,
        pipeline_model_parallel_size=parallel.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=parallel.virtual_pipeline_model_parallel_size,
        context_parallel_size=parallel.context_parallel_size, sequence_parallel=parallel.sequence_parallel,
        params_dtype=dtype, pipeline_dtype=dtype, bf16=dtype == torch.bfloat16,
        # Weights are created whole on the CPU and then sharded, so they do not depend on the
        # layout; model.init then sets them from per-name seeds.
        use_cpu_initialization=True, perform_initialization=False,
        calculate_per_token_loss=True, hidden_dropout=0.0, attention_dropout=0.0,
        masked_softmax_fusion=False, persist_layer_norm=False,
        recompute_granularity=parallel.recompute_granularity,
        recompute_method=parallel.recompute_method,
        recompute_num_layers=parallel.recompute_num_layers,
        **cpu_backend.config_overrides(),
    )


def _fp8_kwargs(fp8: Fp8 | None) -> dict:
    return dataclasses.asdict(fp8) if fp8 is not None else {"fp8": None}


def language_kwargs(config: ModelConfig, parallel: ParallelConfig, dtype: torch.dtype, target: Target,
                    fp8: Fp8 | None = None) -> dict:
    lang = config.language
    return dict(
        num_layers=lang.num_layers, hidden_size=lang.hidden_size, ffn_hidden_size=lang.ffn_hidden_size,
        num_attention_heads=lang.num_attention_heads, num_query_groups=lang.num_query_groups,
        kv_channels=lang.kv_channels, normalization="RMSNorm", layernorm_epsilon=lang.norm_epsilon,
        qk_layernorm=True, gated_linear_unit=True, activation_func=F.silu,
        add_bias_linear=False, add_qkv_bias=False,
        **_common(parallel, dtype), **fusions(target), **_fp8_kwargs(fp8),
    )


def vision_kwargs(config: ModelConfig, parallel: ParallelConfig, dtype: torch.dtype, target: Target,
                  fp8: Fp8 | None = None) -> dict:
    vis = config.vision
    fused = target.device == "cuda"
    return dict(
        num_layers=vis.num_layers, hidden_size=vis.hidden_size, ffn_hidden_size=vis.ffn_hidden_size,
        num_attention_heads=vis.num_attention_heads, kv_channels=vis.hidden_size // vis.num_attention_heads,
        normalization="LayerNorm", layernorm_epsilon=vis.norm_epsilon,
        # SigLIP's MLP uses the tanh approximation of GELU, which is what megatron's fused bias-GELU
        # computes (it requires activation_func to be F.gelu to take that path).
        activation_func=F.gelu if fused else functools.partial(F.gelu, approximate="tanh"),
        add_bias_linear=True, add_qkv_bias=True, gated_linear_unit=False,
        **_common(_first_stage_only(parallel), dtype), **fusions(target),
        **_fp8_kwargs(fp8 if fp8 is not None and vision_fp8_reason(config, parallel, fp8) is None else None),
    )


def projector_kwargs(config: ModelConfig, parallel: ParallelConfig, dtype: torch.dtype, target: Target,
                     fp8: Fp8 | None = None) -> dict:
    return dict(
        num_layers=1, hidden_size=config.language.hidden_size,
        ffn_hidden_size=config.projector_hidden_size or config.language.hidden_size,
        # No attention in a projector; heads only has to divide by the tensor-parallel size.
        num_attention_heads=parallel.tensor_model_parallel_size,
        activation_func=F.gelu, add_bias_linear=True, gated_linear_unit=False,
        **_common(_first_stage_only(parallel), dtype), **fusions(target, fused_activation=False),
        **_fp8_kwargs(fp8 if fp8 is not None and projector_fp8_reason(config, parallel, fp8) is None else None),
    )
