"""Build what a run trains: model chunks (pipeline/virtual-pipeline aware), freezing, megatron-core
DistributedDataParallel, the optimizer and the learning-rate schedule."""

from __future__ import annotations

import torch

from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.module import Float16Module

from megatron_infimed.config.presets import ModelConfig, get_preset
from megatron_infimed.model.infimed import InfiMedModel
from megatron_infimed.model.init import initialize_weights
from megatron_infimed.runtime import distributed
from megatron_infimed.training.config import TrainConfig


def model_config_for(config: TrainConfig) -> ModelConfig:
    model = get_preset(config.preset).with_overrides(config.model)
    if config.seq_length > model.language.max_position_embeddings:
        raise ValueError(f"--seq-length {config.seq_length} exceeds the model's maximum sequence length "
                         f"{model.language.max_position_embeddings}")
    return model


def parallel_dict(config: TrainConfig) -> dict:
    return {
        "tensor_model_parallel_size": config.tensor_model_parallel_size,
        "pipeline_model_parallel_size": config.pipeline_model_parallel_size,
        "virtual_pipeline_model_parallel_size": config.virtual_pipeline_model_parallel_size,
        "context_parallel_size": config.context_parallel_size,
        "recompute_granularity": config.recompute_granularity,
        "recompute_method": config.recompute_method,
        "recompute_num_layers": config.recompute_num_layers,
    }


def dtype_for(config: TrainConfig) -> torch.dtype:
    return torch.bfloat16 if config.bf16 else torch.float32


def build_model_chunks(config: TrainConfig, model_config: ModelConfig) -> list[InfiMedModel]:
    """One chunk per virtual pipeline stage (one chunk without virtual pipelining)."""
    vp = config.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vp or 1):
        stage = vp_stage if vp else None
        chunk = InfiMedModel(
            model_config,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            parallel=parallel_dict(config), transformer_impl=config.transformer_impl,
            dtype=dtype_for(config), vp_stage=stage,
        )
        initialize_weights(chunk, config.seed)
        if torch.cuda.is_available():
            chunk.cuda()
        chunks.append(chunk)
    return chunks


def freeze(chunks: list[InfiMedModel], config: TrainConfig) -> None:
    """Frozen parts get no gradient, hence no optimizer state, and stay bitwise unchanged."""
    for chunk in chunks:
        parts = {"vision": chunk.vision_model, "projector": chunk.projector, "language": chunk.language_model}
        for name, module in parts.items():
            if module is not None and getattr(config, f"freeze_{name}"):
                module.requires_grad_(False)
    trainable = sum(p.requires_grad for c in chunks for p in c.parameters())
    total = torch.tensor([trainable], dtype=torch.long, device=distributed.device())
    torch.distributed.all_reduce(total)
    if total.item() == 0:
        raise ValueError("every part of the model is frozen: nothing to train")


def unwrap(model: torch.nn.Module) -> InfiMedModel:
    """The InfiMedModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def wrap_ddp(chunks: list[InfiMedModel], config: TrainConfig) -> list[DistributedDataParallel]:
    """bf16 runs keep fp32 master weights in the optimizer and bf16 weights in Float16Module."""
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False,
        use_distributed_optimizer=config.use_distributed_optimizer,
    )
    wrapped = []
    for i, chunk in enumerate(chunks):
        module = Float16Module(chunk.config, chunk) if config.bf16 else chunk
        wrapped.append(DistributedDataParallel(
            chunk.config, ddp_config, module,
            # Only the first chunk may skip bucketing, as Megatron-LM does.
            disable_bucketing=i > 0,
        ))
    return wrapped


def build_optimizer(chunks, config: TrainConfig):
    if config.use_distributed_optimizer and not torch.cuda.is_available():
        raise ValueError("--use-distributed-optimizer needs CUDA: megatron-core's DistributedOptimizer accepts "
                         "only CUDA parameters; drop the flag on CPU runs")
    optimizer_config = OptimizerConfig(
        optimizer="adam", lr=config.lr, min_lr=config.min_lr, weight_decay=config.weight_decay,
        adam_beta1=config.adam_beta1, adam_beta2=config.adam_beta2, clip_grad=config.clip_grad,
        bf16=config.bf16, params_dtype=dtype_for(config),
        use_distributed_optimizer=config.use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(optimizer_config, chunks)
    decay_iters = config.lr_decay_iters or config.train_iters
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0 if config.lr_warmup_iters else config.lr, max_lr=config.lr,
        min_lr=config.min_lr, lr_warmup_steps=config.lr_warmup_iters,
        lr_decay_steps=max(decay_iters, config.lr_warmup_iters + 1), lr_decay_style=config.lr_decay_style,
        start_wd=config.weight_decay, end_wd=config.weight_decay, wd_incr_steps=decay_iters,
        wd_incr_style="constant",
    )
    return optimizer, scheduler
