"""Build what a run trains, in the order the run needs it: the model config and the tokenizer
(which fixes ``image_token_id``) first, then model chunks (pipeline/virtual-pipeline aware),
freezing, megatron-core DistributedDataParallel, the optimizer and the learning-rate schedule."""

from __future__ import annotations

import torch
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig, distrib_optimizer, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler
from megatron.core.transformer.module import Float16Module

from megatron_infimed.config.presets import ModelConfig, get_preset
from megatron_infimed.config.run import ModelSection, RunConfig
from megatron_infimed.data.tokenizer import Tokenizer, align_model_config, load_tokenizer
from megatron_infimed.model.infimed import InfiMedModel
from megatron_infimed.model.init import initialize_weights


def model_config_for(config: RunConfig) -> ModelConfig:
    """The preset with the run's overrides (before the tokenizer has its say)."""
    model = get_preset(config.model.preset).with_overrides(config.model.overrides)
    if config.batch.seq_length > model.language.max_position_embeddings:
        raise ValueError(f"--seq-length {config.batch.seq_length} exceeds the model's maximum sequence length "
                         f"{model.language.max_position_embeddings}")
    return model


def resolve_model(config: RunConfig) -> tuple[ModelConfig, Tokenizer | None]:
    """The model config and the tokenizer, resolved before anything is built from them: the
    tokenizer fixes ``image_token_id`` and must fit the embedding table (mock data has none)."""
    model_config = model_config_for(config)
    if config.data.mock_data:
        return model_config, None
    tokenizer = load_tokenizer(config.data.tokenizer)
    return align_model_config(model_config, tokenizer), tokenizer


def dtype_for(model: ModelSection) -> torch.dtype:
    return torch.bfloat16 if model.bf16 else torch.float32


def build_model_chunks(config: RunConfig, model_config: ModelConfig) -> list[InfiMedModel]:
    """One chunk per virtual pipeline stage (one chunk without virtual pipelining)."""
    vp = config.parallel.virtual_pipeline_model_parallel_size
    chunks = []
    for vp_stage in range(vp or 1):
        stage = vp_stage if vp else None
        chunk = InfiMedModel(
            model_config,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
            parallel=config.parallel, transformer_impl=config.model.transformer_impl,
            dtype=dtype_for(config.model), vp_stage=stage,
        )
        initialize_weights(chunk, config.optim.seed)
        if torch.cuda.is_available():
            chunk.cuda()
        chunks.append(chunk)
    return chunks


def freeze(chunks: list[InfiMedModel], model: ModelSection) -> None:
    """Frozen parts get no gradient, hence no optimizer state, and stay bitwise unchanged. (A run
    that freezes every part is refused when its configuration is parsed.)"""
    for chunk in chunks:
        parts = {"vision": chunk.vision_model, "projector": chunk.projector, "language": chunk.language_model}
        for name, module in parts.items():
            if module is not None and getattr(model, f"freeze_{name}"):
                module.requires_grad_(False)


def unwrap(model: torch.nn.Module) -> InfiMedModel:
    """The InfiMedModel inside DDP / Float16Module wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def with_precision(chunk: InfiMedModel, bf16: bool) -> torch.nn.Module:
    """The one way bf16 is applied: megatron-core's Float16Module casts every parameter and buffer
    (the ViT's patch conv and norms included) and the inputs, and returns fp32 outputs."""
    return Float16Module(chunk.config, chunk) if bf16 else chunk


def wrap_ddp(chunks: list[InfiMedModel], config: RunConfig) -> list[DistributedDataParallel]:
    """bf16 runs keep fp32 master weights in the optimizer and bf16 weights in Float16Module."""
    ddp_config = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False,
        use_distributed_optimizer=config.parallel.use_distributed_optimizer,
    )
    wrapped = []
    for i, chunk in enumerate(chunks):
        module = with_precision(chunk, config.model.bf16)
        wrapped.append(DistributedDataParallel(
            chunk.config, ddp_config, module,
            # As Megatron-LM does: only the first chunk buckets its gradients; the later chunks'
            # reduction overlaps with compute anyway.
            disable_bucketing=i > 0,
        ))
    return wrapped


def build_optimizer(chunks, config: RunConfig):
    optim = config.optim
    fused_adam = distrib_optimizer.HAVE_APEX_OR_TE
    if config.parallel.use_distributed_optimizer and torch.cuda.is_available() and not fused_adam:
        raise ValueError("--use-distributed-optimizer on CUDA needs Transformer Engine (the gpu extra) or Apex: "
                         "without their FusedAdam, megatron-core 0.16.1's DistributedOptimizer cannot reload its "
                         "checkpoint (only the CPU backend adapts torch's Adam to it); install one or drop the flag")
    optimizer_config = OptimizerConfig(
        optimizer="adam", lr=optim.lr, min_lr=optim.min_lr, weight_decay=optim.weight_decay,
        adam_beta1=optim.adam_beta1, adam_beta2=optim.adam_beta2, clip_grad=optim.clip_grad,
        bf16=config.model.bf16, params_dtype=dtype_for(config.model),
        use_distributed_optimizer=config.parallel.use_distributed_optimizer,
    )
    optimizer = get_megatron_optimizer(optimizer_config, chunks)
    decay_iters = optim.lr_decay_iters or optim.train_iters
    scheduler = OptimizerParamScheduler(
        optimizer, init_lr=0.0 if optim.lr_warmup_iters else optim.lr, max_lr=optim.lr,
        min_lr=optim.min_lr, lr_warmup_steps=optim.lr_warmup_iters,
        lr_decay_steps=max(decay_iters, optim.lr_warmup_iters + 1), lr_decay_style=optim.lr_decay_style,
        start_wd=optim.weight_decay, end_wd=optim.weight_decay, wd_incr_steps=decay_iters,
        wd_incr_style="constant",
    )
    return optimizer, scheduler
