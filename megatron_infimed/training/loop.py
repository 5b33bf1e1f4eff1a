"""The training loop on megatron-core: schedules, optimizer step, logging, checkpoints, signals.

Each iteration takes ``global_batch_size`` packs: ``num_microbatches`` per data-parallel rank,
run through ``get_forward_backward_func`` (no pipelining, 1F1B, or interleaved 1F1B with
virtual stages), then one optimizer step with gradient clipping and one scheduler step.
"""

from __future__ import annotations

import signal
import time

import torch

from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_infimed.runtime import distributed
from megatron_infimed.training import checkpoint
from megatron_infimed.training.async_save import async_calls_queue
from megatron_infimed.training.config import TrainConfig
from megatron_infimed.training.data import build_data_source
from megatron_infimed.training.flops import training_flops
from megatron_infimed.training.metrics import MetricsLogger, SampleLedger, peak_tflops
from megatron_infimed.training.feed import StepFeed, reads_data
from megatron_infimed.training.setup import (
    build_model_chunks, build_optimizer, freeze, wrap_ddp,
)
from megatron_infimed.training.step import (
    LossAccumulator, check_step_finite, make_finalize_grads, make_forward_step,
)
from megatron_infimed.training.tracker import resume_point


class StoppedBySignal(Exception):
    """The run stopped early on a signal (after saving, if it could); ``exit_code`` is 128 + the
    signal's number, as a shell reports a signal, so a requeue script can tell it from success."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.exit_code = 128 + signum


class DataWaitInterrupted(Exception):
    """A stop signal arrived while the loop was waiting for the next step's data."""


class _StopRequest:
    """SIGTERM, SIGINT and SIGUSR1 (SLURM's warning before the time limit) ask for save-and-exit at
    the end of the step; a second SIGINT aborts at once. A step whose data has not come
    ``grace_seconds`` after such a signal is given up (``DataWaitInterrupted``, via SIGALRM): a
    reader that never yields cannot keep SLURM from stopping the job, while a merely slow one
    still delivers its step, which is then saved."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)

    def __init__(self, grace_seconds: float = 10.0):
        self.signum: int | None = None
        self.grace_seconds = grace_seconds
        self.waiting_for_data = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (*self.SIGNALS, signal.SIGALRM)}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if signum == signal.SIGALRM:
            if self.waiting_for_data:
                raise DataWaitInterrupted()
            return
        if signum == signal.SIGINT and self.signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt("second SIGINT: aborting without saving")
        self.signum = self.signum or signum
        if self.waiting_for_data:
            self._arm()

    def _arm(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, self.grace_seconds)

    def wait_for_data(self):
        """Context for the wait: a signal before or during it gives the data ``grace_seconds``."""
        return _DataWait(self)

    def restore(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _DataWait:
    def __init__(self, stop: _StopRequest):
        self.stop = stop

    def __enter__(self):
        self.stop.waiting_for_data = True
        if self.stop.requested:  # the signal came during the last step's compute
            self.stop._arm()

    def __exit__(self, *exc):
        self.stop.waiting_for_data = False
        signal.setitimer(signal.ITIMER_REAL, 0)


def _batch_sizes(config: TrainConfig) -> tuple[int, int, int]:
    dp = parallel_state.get_data_parallel_world_size()
    gbs = config.global_batch_size or config.micro_batch_size * dp
    if gbs % (config.micro_batch_size * dp):
        raise ValueError(f"--global-batch-size {gbs} must be a multiple of micro-batch size × data-parallel "
                         f"size = {config.micro_batch_size} × {dp}")
    return dp, gbs, gbs // (config.micro_batch_size * dp)


def train(config: TrainConfig) -> dict:
    """Run (or resume) a training run; returns the last logged metrics record. Raises
    ``StoppedBySignal`` after a stop asked for by a signal."""
    resume, note = resume_point(config.load, config.save)  # before any process group: a bad --load fails fast
    distributed.initialize(distributed.ParallelConfig(
        tensor_model_parallel_size=config.tensor_model_parallel_size,
        pipeline_model_parallel_size=config.pipeline_model_parallel_size,
        virtual_pipeline_model_parallel_size=config.virtual_pipeline_model_parallel_size,
        context_parallel_size=config.context_parallel_size), config.seed)
    stop = _StopRequest()
    try:
        if torch.distributed.get_rank() == 0:
            print(f"infimed-train: {note}", flush=True)
        return _run(config, stop, resume is not None)
    finally:
        stop.restore()
        distributed.shutdown()


def _run(config: TrainConfig, stop: _StopRequest, resume: bool) -> dict:
    start_time = time.time()
    dp, gbs, num_micro = _batch_sizes(config)
    source, model_config = build_data_source(config, dp, num_micro, reads=reads_data())
    chunks = build_model_chunks(config, model_config)
    if config.pretrained_checkpoint and not resume:
        checkpoint.load_weights(config.pretrained_checkpoint, chunks, config.verify_checkpoint)
    freeze(chunks, config)
    model = wrap_ddp(chunks, config)
    optimizer, scheduler = build_optimizer(model, config)
    iteration, consumed = 0, 0
    feed = StepFeed(source, num_micro, len(model))
    if resume:
        state = checkpoint.load(config.load, chunks, optimizer, scheduler, feed, config.reset_data_state,
                                config.verify_checkpoint)
        iteration, consumed = state["iteration"], state["consumed_samples"]

    accumulator, seen = LossAccumulator(), []
    for chunk in model:
        chunk.config.finalize_model_grads_func = make_finalize_grads(accumulator)
        chunk.config.no_sync_func = [m.no_sync for m in model] if len(model) > 1 else model[0].no_sync
    forward_backward = get_forward_backward_func()
    forward_step = make_forward_step(accumulator, seen)
    tokens_per_micro = config.seq_length * config.micro_batch_size
    owns_loss = (parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
                 and parallel_state.get_data_parallel_rank() == 0)
    logger = MetricsLogger(config.run_dir, owns_loss, config.wandb_project, config.wandb_mode, config.to_dict())
    ledger = SampleLedger(config.run_dir, parallel_state.is_pipeline_last_stage()
                          and parallel_state.get_tensor_model_parallel_rank() == 0)
    logger.start_at(iteration)
    ledger.start_at(iteration, parallel_state.get_data_parallel_rank())
    peak = peak_tflops()
    async_queue = async_calls_queue() if config.async_save else None
    record: dict = {}
    try:
        while iteration < config.train_iters:
            step_start = time.perf_counter()
            accumulator.reset()
            seen.clear()
            for chunk in model:
                chunk.zero_grad_buffer()
            optimizer.zero_grad()
            iterators = _next_step(feed, stop, iteration)
            forward_backward(
                forward_step_func=forward_step, data_iterator=iterators if len(model) > 1 else iterators[0],
                model=model, num_microbatches=num_micro, seq_length=tokens_per_micro, micro_batch_size=1,
                forward_only=False,
            )
            if config.check_for_nan_in_loss_and_grad:
                check_step_finite(iteration + 1, accumulator, model)
            _, grad_norm, _ = optimizer.step()
            lr = optimizer.param_groups[0]["lr"]  # the rate this step used
            scheduler.step(increment=1)
            iteration += 1
            consumed += gbs
            step_seconds = time.perf_counter() - step_start
            record = _metrics(iteration, consumed, accumulator, seen, grad_norm, lr, model_config,
                              step_seconds, feed.take_wait_seconds(), feed, peak)
            ledger.write(iteration, parallel_state.get_data_parallel_rank(), seen)
            if iteration % config.log_interval == 0 or iteration == config.train_iters:
                logger.log(record)
            timed_out = (config.exit_duration_in_mins is not None
                         and time.time() - start_time > 60 * config.exit_duration_in_mins)
            signum, timed_out = _stop_reasons(stop, timed_out)
            must_exit = signum is not None or timed_out
            due = config.save_interval and iteration % config.save_interval == 0
            if async_queue is not None:
                async_queue.maybe_finalize_async_calls(blocking=False)
            if config.save and (due or must_exit or iteration == config.train_iters):
                if async_queue is not None:  # one save in flight at a time
                    async_queue.maybe_finalize_async_calls(blocking=True)
                checkpoint.save(config.save, iteration, consumed, chunks, optimizer, scheduler, feed, config,
                                tokenizer_path=None if config.mock_data else config.tokenizer,
                                async_queue=async_queue)
            if signum is not None:
                saved = f"saved iteration {iteration} to {config.save}" if config.save else "no --save given"
                raise StoppedBySignal(signum, f"stopped by {signal.Signals(signum).name} after iteration "
                                              f"{iteration}: {saved}")
            if timed_out:
                _say(f"infimed-train: --exit-duration-in-mins {config.exit_duration_in_mins} reached after "
                     f"iteration {iteration}; stopping")
                break
    finally:
        if async_queue is not None:  # a save in flight finishes (and names itself) even on an error
            async_queue.maybe_finalize_async_calls(blocking=True)
            async_queue.close()
        logger.close()
    return record


def _next_step(feed: StepFeed, stop: _StopRequest, iteration: int):
    """The step's packs. Data that arrives within the grace period after a stop signal is trained
    and saved at the end of the step, by every rank together. Data that does not ends the run here,
    unsaved: the loader has moved into a step that will not run, and other ranks may be inside the
    step's collectives."""
    try:
        with stop.wait_for_data():
            return feed.next_step()
    except DataWaitInterrupted:
        name = signal.Signals(stop.signum).name
        raise StoppedBySignal(stop.signum, f"stopped by {name}: the data of iteration {iteration + 1} did not "
                                           f"come within {stop.grace_seconds:g} s; not saved, the last "
                                           f"checkpoint stands") from None


def _stop_reasons(stop: _StopRequest, timed_out: bool) -> tuple[int | None, bool]:
    """(a signal any rank received, whether any rank ran out of time): one collective, so that every
    rank saves and stops together."""
    value = torch.tensor([stop.signum or 0, int(timed_out)], device=distributed.device())
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    signum, timed_out = value.tolist()
    return (int(signum) or None), bool(timed_out)


def _say(line: str) -> None:
    if torch.distributed.get_rank() == 0:
        print(line, flush=True)


def _metrics(iteration, consumed, accumulator, seen, grad_norm, lr, model_config, seconds, wait,
             feed, peak) -> dict:
    """Loss and token counts summed over data-parallel ranks (on the last pipeline stage)."""
    real = sum(p.num_real_tokens for p in seen)
    slots = sum(p.num_tokens for p in seen)
    flops = sum(training_flops(model_config, (p.cu_seqlens[1:] - p.cu_seqlens[:-1]).tolist(),
                               p.images.shape[0]) for p in seen)
    stats = feed.stats()
    totals = torch.tensor([accumulator.loss_sum.item(), accumulator.weight_sum.item(), real, slots, flops,
                           stats.get("skipped", 0)], dtype=torch.float64, device=distributed.device())
    torch.distributed.all_reduce(totals, group=parallel_state.get_data_parallel_group())
    loss_sum, weight_sum, real, slots, flops, skipped = totals.tolist()
    world = torch.distributed.get_world_size()
    tflops_per_gpu = flops / seconds / world / 1e12
    # The loader's cumulative counters (truncations, bad inputs, ...) of this data-parallel rank.
    loader_counters = {k: v for k, v in stats.items() if k.startswith("data/")}
    return {
        "iteration": iteration, "consumed_samples": consumed,
        "loss": loss_sum / weight_sum if weight_sum else float("nan"),
        "grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
        "lr": lr, "tokens": int(real),
        "tokens_per_s": real / seconds, "fill_ratio": real / slots if slots else 0.0,
        "samples_per_micro_batch": sum(len(p.sample_ids) for p in seen) / len(seen) if seen else 0.0,
        "tflops_per_gpu": tflops_per_gpu, "mfu": tflops_per_gpu / peak if peak else None,
        "step_time_s": seconds, "data_wait_s": wait, "skipped_samples": int(skipped),
        **loader_counters,
    }
