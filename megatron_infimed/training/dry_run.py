"""``infimed-train --dry-run``: build the model on the meta device (no weights allocated) and
report its parameter counts, image tokens and FLOPs per token."""

from __future__ import annotations

import torch

from megatron_infimed.model.infimed import InfiMedModel
from megatron_infimed.model.token_reduction import tokens_per_image
from megatron_infimed.runtime import cpu_backend, distributed
from megatron_infimed.config.run import ParallelConfig, RunConfig
from megatron_infimed.training.flops import flops_per_token
from megatron_infimed.training.setup import model_config_for


def count(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def dry_run_report(config: RunConfig) -> dict:
    model_config = model_config_for(config)
    owns_world = not torch.distributed.is_initialized()
    if owns_world:
        distributed.initialize(ParallelConfig(), config.optim.seed)
    try:
        with cpu_backend.cuda_as_cpu(), torch.device("meta"):
            model = InfiMedModel(model_config, transformer_impl=config.model.transformer_impl)
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
    }
