"""One micro-batch through the model, as megatron-core's pipeline schedules call it.

The loss is a global weighted mean: ``Σ w·ce / Σ w`` over every micro-batch and data-parallel
rank of the step, with ``w`` the loader's per-token loss weights (1 per trainable token in
``token`` mode; ``sample`` and ``square`` weight each sample as the loader documents).
megatron-core's ``calculate_per_token_loss`` path keeps an *integer* token count, so the
weight sum is kept here (``LossAccumulator``) and the gradients are divided by it in
``finalize_grads`` after megatron has summed them across data-parallel ranks.

Tensor-parallel rank 0 gets each pack from ``feed.StepFeed`` (the first stage reads, later stages
receive all but the images) and broadcasts it to its tensor-parallel group, as Megatron-LM does.
"""

from __future__ import annotations

from functools import partial

import torch

from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads

from megatron_infimed.data.pack import Pack
from megatron_infimed.model.infimed import packed_seq_params
from megatron_infimed.runtime import distributed
from megatron_infimed.training.feed import broadcast_packs
from megatron_infimed.training.setup import unwrap


def broadcast_pack(pack: Pack | None) -> Pack:
    """Send tensor-parallel rank 0's pack to the other ranks of its tensor-parallel group."""
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return pack
    packs, _ = broadcast_packs([pack] if pack is not None else None,
                               parallel_state.get_tensor_model_parallel_src_rank(),
                               parallel_state.get_tensor_model_parallel_group())
    return packs[0]


class LossAccumulator:
    """Collects Σ w·ce and Σ w of the micro-batches this rank's last stage sees in one step."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        # On the rank's device: they are reduced over NCCL on GPUs.
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=distributed.device())
        self.weight_sum = torch.zeros((), dtype=torch.float64, device=distributed.device())
        self.packs: list[Pack] = []

    def loss_func(self, loss_weights: torch.Tensor, output_tensor: torch.Tensor):
        weighted = (output_tensor.float().view(-1) * loss_weights.view(-1)).sum()
        weight = loss_weights.sum().detach()
        self.loss_sum += weighted.detach().double()
        self.weight_sum += weight.double()
        count = (loss_weights > 0).sum().to(torch.int)
        return weighted, count, {"loss": torch.stack([weighted.detach(), weight])}


def make_forward_step(accumulator: LossAccumulator, seen: list[Pack]):
    """The ``forward_step_func`` for ``get_forward_backward_func``."""

    def forward_step(data_iterator, model):
        unwrapped = unwrap(model)
        # Each pack reaches the device when its micro-batch runs, not a whole step's images at once.
        local = (next(data_iterator).to(distributed.device())
                 if parallel_state.get_tensor_model_parallel_rank() == 0 else None)
        pack = broadcast_pack(local)
        if unwrapped.post_process:
            seen.append(pack)
        output = model(
            pack.tokens.view(1, -1), pack.position_ids.view(1, -1),
            images=pack.images if unwrapped.pre_process else None,
            packed_seq_params=packed_seq_params(pack.cu_seqlens, pack.max_seqlen),
            labels=pack.labels.view(1, -1) if unwrapped.post_process else None,
            images_per_sample=pack.images_per_sample, sample_ids=pack.sample_ids,
        )
        return output, partial(accumulator.loss_func, pack.loss_weights)

    return forward_step


def global_weight_sum(accumulator: LossAccumulator) -> torch.Tensor:
    """Σ w of the whole step: from the last pipeline stage, summed over data-parallel ranks."""
    total = accumulator.weight_sum.clone()
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    last = parallel_state.get_pipeline_model_parallel_last_rank()
    torch.distributed.broadcast(total, src=last, group=pp_group)
    torch.distributed.all_reduce(total, group=parallel_state.get_data_parallel_group())
    return total


def make_finalize_grads(accumulator: LossAccumulator):
    """megatron's gradient finalisation (DP all-reduce, tied embeddings), then ÷ Σ w."""

    def finalize(model_chunks, num_tokens=None, pg_collection=None, force_all_reduce=False):
        finalize_model_grads(model_chunks, num_tokens=None, pg_collection=pg_collection,
                             force_all_reduce=force_all_reduce)
        total = global_weight_sum(accumulator)
        if total > 0:
            for chunk in model_chunks:
                chunk.scale_gradients(float(1.0 / total))

    return finalize


class NonFiniteStep(FloatingPointError):
    """The loss or a gradient of a step is NaN/inf; raised before the optimizer applies it."""


def check_step_finite(iteration: int, accumulator: LossAccumulator, model_chunks) -> None:
    """Megatron's ``--check-for-nan-in-loss-and-grad``, collectively: after the gradients are reduced
    and before ``optimizer.step``, every rank learns whether any rank saw a NaN/inf loss (last
    stage) or gradient, and all raise ``NonFiniteStep`` naming the iteration. One norm per gradient
    buffer, as megatron's own check: a NaN or inf anywhere makes the norm non-finite."""
    loss_bad = not torch.isfinite(accumulator.loss_sum).item()
    grad_bad = any(not torch.isfinite(buffer.grad_data.norm(p=2)).item()
                   for chunk in model_chunks for buffer in chunk.buffers + chunk.expert_parallel_buffers)
    flags = torch.tensor([int(loss_bad), int(grad_bad)], device=distributed.device())
    torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
    loss_bad, grad_bad = (bool(v) for v in flags.tolist())
    if loss_bad or grad_bad:
        what = " and ".join(w for w, bad in (("the loss", loss_bad), ("the gradients", grad_bad)) if bad)
        raise NonFiniteStep(
            f"iteration {iteration}: {what} {'are' if ' and ' in what or what.endswith('s') else 'is'} NaN or "
            f"inf; stopping before the optimizer step (nothing was saved from this iteration). Lower --lr or "
            f"check the data; --no-check-for-nan-in-loss-and-grad turns this check off")
