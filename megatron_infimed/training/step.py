"""One micro-batch through the model, as megatron-core's pipeline schedules call it.

The loss is a global weighted mean: ``Σ w·ce / Σ w`` over every micro-batch and data-parallel
rank of the step (and context-parallel rank: each holds its chunks' tokens), with ``w`` the
loader's per-token loss weights (1 per trainable token in ``token`` mode; ``sample`` and
``square`` weight each sample as the loader documents).
megatron-core's ``calculate_per_token_loss`` path keeps an *integer* token count, so the
weight sum is kept here (``LossAccumulator``) and the gradients are divided by it in
``finalize_grads`` after megatron has summed them across data- × context-parallel ranks.

Each micro-batch's pack comes from ``feed.micro_batch`` (the module that owns a step's packs from
the reader to the device).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import torch
from megatron.core import parallel_state
from megatron.core.distributed import finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_infimed.data.pack import Pack
from megatron_infimed.model.context_parallel import ContextShard
from megatron_infimed.model.infimed import packed_seq_params
from megatron_infimed.runtime import distributed
from megatron_infimed.training.feed import micro_batch
from megatron_infimed.training.setup import unwrap
from megatron_infimed.training.signals import StopRequest, next_step


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
        pack = micro_batch(data_iterator, unwrapped.check_pack)
        if unwrapped.post_process:
            seen.append(pack)
        context, loss_weights = None, pack.loss_weights
        if parallel_state.get_context_parallel_world_size() > 1:
            # Every CP rank holds the whole pack; the model keeps this rank's chunks of it.
            context = ContextShard.of(pack.bounds, parallel_state.get_context_parallel_group(), pack.tokens.device)
            loss_weights = context.take(loss_weights)
        output = model(
            pack.tokens.view(1, -1), pack.position_ids.view(1, -1),
            images=pack.images if unwrapped.pre_process else None,
            packed_seq_params=packed_seq_params(pack.cu_seqlens, pack.max_seqlen, context is not None),
            labels=pack.labels.view(1, -1) if unwrapped.post_process else None,
            images_per_sample=pack.images_per_sample, sample_ids=pack.sample_ids, checked=True,
            padding_ranges=pack.padding_ranges, context=context,
        )
        return output, partial(accumulator.loss_func, loss_weights)

    return forward_step


def global_weight_sum(accumulator: LossAccumulator) -> torch.Tensor:
    """Σ w of the whole step: from the last pipeline stage, summed over data- and context-parallel
    ranks (the group megatron's DDP sums the gradients over)."""
    total = accumulator.weight_sum.clone()
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    last = parallel_state.get_pipeline_model_parallel_last_rank()
    torch.distributed.broadcast(total, src=last, group=pp_group)
    torch.distributed.all_reduce(total, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    return total


def make_finalize_grads(accumulator: LossAccumulator):
    """megatron's gradient finalisation (DP × CP all-reduce, tied embeddings, sequence-parallel norm
    weights over TP), then ÷ Σ w."""

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


@dataclass
class StepResult:
    """What one optimizer step did, for the metrics: this rank's last-stage packs and loss sums."""

    packs: list[Pack]
    loss_sum: float
    weight_sum: float
    grad_norm: float | None
    lr: float
    seconds: float
    data_wait_seconds: float


class Stepper:
    """One optimizer step of ``run``: the step's packs through megatron's schedule, the NaN check,
    the optimizer and the schedule. ``run.iteration`` and ``run.consumed_samples`` advance."""

    def __init__(self, run):
        self.run = run
        self.accumulator, self.seen = LossAccumulator(), []
        model = run.model
        for chunk in model:
            chunk.config.finalize_model_grads_func = make_finalize_grads(self.accumulator)
            chunk.config.no_sync_func = [m.no_sync for m in model] if len(model) > 1 else model[0].no_sync
        self.forward_backward = get_forward_backward_func()
        self.forward_step = make_forward_step(self.accumulator, self.seen)

    def step(self, stop: StopRequest) -> StepResult:
        run = self.run
        start = time.perf_counter()
        self.accumulator.reset()
        self.seen.clear()
        for chunk in run.model:
            chunk.zero_grad_buffer()
        run.optimizer.zero_grad()
        iterators = next_step(run.feed, stop, run.iteration)
        self.forward_backward(
            forward_step_func=self.forward_step, data_iterator=iterators if len(run.model) > 1 else iterators[0],
            model=run.model, num_microbatches=run.shape.num_microbatches,
            seq_length=run.config.batch.micro_batch_slots, micro_batch_size=1, forward_only=False,
        )
        if run.config.optim.check_for_nan_in_loss_and_grad:
            check_step_finite(run.iteration + 1, self.accumulator, run.model)
        _, grad_norm, _ = run.optimizer.step()
        lr = run.optimizer.param_groups[0]["lr"]  # the rate this step used
        run.scheduler.step(increment=1)
        run.iteration += 1
        run.consumed_samples += run.shape.global_batch_size
        return StepResult(list(self.seen), self.accumulator.loss_sum.item(), self.accumulator.weight_sum.item(),
                          grad_norm, lr, time.perf_counter() - start, run.feed.take_wait_seconds())
