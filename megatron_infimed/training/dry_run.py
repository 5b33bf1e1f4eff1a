"""``infimed-train --dry-run``: what a run would build, without building it on a device.

The model is built on the meta device (no weights allocated) for its parameter counts, image
tokens and FLOPs per token; parameter counts come from the local layers, which hold the same
parameters as Transformer Engine's. ``effective`` shows the settings of the language, vision and
projector ``TransformerConfig`` that decide what runs, for this machine or for ``--device cuda``
(read them before booking a cluster): the configs are plain settings, so neither CUDA nor
Transformer Engine is needed to see them. ``memory`` plans the bytes per GPU of ``world_size``
GPUs against ``gpu_memory_gb`` (training/memory.py).
"""

from __future__ import annotations

import torch

from megatron_infimed.config.flags import Mode
from megatron_infimed.config.presets import ModelConfig
from megatron_infimed.config.run import ParallelConfig, RunConfig
from megatron_infimed.data.pack_builder import PackLayout
from megatron_infimed.model.infimed import InfiMedModel
from megatron_infimed.model.token_reduction import tokens_per_image
from megatron_infimed.model.transformer_configs import (
    Fp8,
    Target,
    language_kwargs,
    projector_fp8_reason,
    projector_kwargs,
    vision_fp8_reason,
    vision_kwargs,
)
from megatron_infimed.runtime import cpu_backend, distributed
from megatron_infimed.training.flops import flops_per_token
from megatron_infimed.training.memory import plan_memory
from megatron_infimed.training.setup import dtype_for, model_config_for

# Which attention kernel each layer implementation and device end up with.
_ATTENTION = {("te", "cuda"): "transformer_engine: fused THD attention (cuDNN / flash)",
              ("local", "cuda"): "packed_sdpa: torch varlen flash attention (bf16/fp16), else SDPA per segment",
              ("local", "cpu"): "packed_sdpa: SDPA per segment",
              ("te", "cpu"): "transformer_engine (needs a GPU)"}


def count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def dry_run_report(config: RunConfig, device: str | None = None, world_size: int | None = None,
                   gpu_memory_gb: float = Mode.gpu_memory_gb) -> dict:
    model_config = model_config_for(config)
    memory = plan_memory(config, model_config, world_size, gpu_memory_gb)  # a bad layout fails before the build
    owns_world = not torch.distributed.is_initialized()
    if owns_world:
        distributed.initialize(ParallelConfig(), config.optim.seed)
    try:
        with cpu_backend.cuda_as_cpu(), torch.device("meta"):
            model = InfiMedModel(model_config)
    finally:
        if owns_world:
            distributed.shutdown()
    params = {"vision": count(model.vision_model), "projector": count(model.projector),
              "language": count(model.language_model)}
    params["total"] = sum(params.values())
    return {
        "preset": model_config.name,
        "params": params,
        "image_tokens_per_image": tokens_per_image(model_config),
        "flops_per_token": flops_per_token(model_config, config.batch.seq_length),
        "effective": effective(config, model_config, device),
        "memory": memory,
    }


def effective(config: RunConfig, model_config: ModelConfig, device: str | None = None) -> dict:
    """The settings that decide what runs, per part, for ``device`` (default: this machine's)."""
    target = Target(device, config.model.transformer_impl) if device else Target.here(config.model.transformer_impl)
    fp8, dtype, parallel = Fp8.of(config.model), dtype_for(config.model), config.parallel
    parts = {
        "language": (language_kwargs(model_config, parallel, dtype, target, fp8), None),
        "vision": (vision_kwargs(model_config, parallel, dtype, target, fp8),
                   vision_fp8_reason(model_config, parallel, fp8) if fp8 else None),
        "projector": (projector_kwargs(model_config, parallel, dtype, target, fp8),
                      projector_fp8_reason(model_config, parallel, fp8) if fp8 else None),
    }
    report = {name: _view(kwargs, target, reason) for name, (kwargs, reason) in parts.items()}
    return {
        "device": target.device, **report,
        # The trainer's own alignment (TP × SP × CP × FP8), as its loader pads every pack.
        "pad_multiple": PackLayout.of(config).pack_multiple,
    }


def _view(kwargs: dict, target: Target, bf16_reason: str | None) -> dict:
    view = {
        "transformer_impl": target.impl,
        "fp8": kwargs["fp8"], "fp8_recipe": kwargs.get("fp8_recipe") if kwargs["fp8"] else None,
        "params_dtype": str(kwargs["params_dtype"]).removeprefix("torch."),
        "sequence_parallel": kwargs.get("sequence_parallel", False),
        "context_parallel_size": kwargs["context_parallel_size"],
        **{name: kwargs[name] for name in ("apply_rope_fusion", "bias_activation_fusion",
                                           "gradient_accumulation_fusion", "cross_entropy_loss_fusion",
                                           "recompute_granularity")},
        "attention_backend": _ATTENTION[(target.impl, target.device)],
    }
    if bf16_reason:
        view["fp8_kept_bf16_because"] = bf16_reason
    return view
