"""The training loop: build the run, resume it, then one ``train_step`` per iteration with
logging, checkpoints and stops in between.

Each iteration takes ``global_batch_size`` packs: ``num_microbatches`` per data-parallel rank,
run through megatron-core's ``get_forward_backward_func`` (no pipelining, 1F1B, or interleaved
1F1B with virtual stages), then one optimizer step with gradient clipping and one scheduler step
(``step.train_step``).
"""

from __future__ import annotations

import signal
import time

import torch
from megatron.core import parallel_state

from megatron_infimed.checkpoint import dist as checkpoint
from megatron_infimed.checkpoint.async_save import async_calls_queue
from megatron_infimed.checkpoint.layout import pretrained_point, resume_point
from megatron_infimed.config.run import RunConfig
from megatron_infimed.runtime import distributed
from megatron_infimed.training.metrics import MetricsLogger, SampleLedger, peak_tflops, step_record
from megatron_infimed.training.run import Run, build_run
from megatron_infimed.training.signals import StoppedBySignal, StopRequest, stop_reasons
from megatron_infimed.training.step import Stepper


def train(config: RunConfig) -> dict:
    """Run (or resume) a training run; returns the last logged metrics record. Raises
    ``StoppedBySignal`` after a stop asked for by a signal."""
    ckpt = config.checkpoint
    # Before any process group starts, so that a wrong folder fails fast and in one line.
    resume, note = resume_point(ckpt.load, ckpt.save)
    if resume is None and ckpt.pretrained_checkpoint:
        note += f" from the weights of iteration {pretrained_point(ckpt.pretrained_checkpoint)} of " \
                f"{ckpt.pretrained_checkpoint}"
    distributed.initialize(config.parallel, config.optim.seed)
    stop = StopRequest()
    try:
        _say(f"infimed-train: {note}")
        run = build_run(config, resume is not None)
        if resume is not None:
            checkpoint.load(ckpt.load, run)
        return _loop(run, stop)
    finally:
        stop.restore()
        distributed.shutdown()


def _loop(run: Run, stop: StopRequest) -> dict:
    config = run.config
    start_time = time.time()
    stepper = Stepper(run)
    # One writer per data-parallel rank: its last stage's tensor- and context-parallel rank 0.
    last_stage_tp0 = (parallel_state.is_pipeline_last_stage() and parallel_state.get_tensor_model_parallel_rank() == 0
                      and parallel_state.get_context_parallel_rank() == 0)
    logger = MetricsLogger(config.logging, last_stage_tp0 and parallel_state.get_data_parallel_rank() == 0,
                           config.to_dict())
    ledger = SampleLedger(config.logging.run_dir, last_stage_tp0)
    logger.start_at(run.iteration)
    ledger.start_at(run.iteration, parallel_state.get_data_parallel_rank())
    peak = peak_tflops(config.logging.peak_tflops)
    async_queue = async_calls_queue() if config.checkpoint.async_save else None
    record: dict = {}
    try:
        while run.iteration < config.optim.train_iters:
            result = stepper.step(stop)
            record = step_record(run, result, peak)
            ledger.write(run.iteration, parallel_state.get_data_parallel_rank(), result.packs)
            if run.iteration % config.logging.log_interval == 0 or run.iteration == config.optim.train_iters:
                logger.log(record)
            minutes = config.checkpoint.exit_duration_in_mins
            signum, timed_out = stop_reasons(stop, minutes is not None and time.time() - start_time > 60 * minutes)
            _save_if_due(run, async_queue, stopping=signum is not None or timed_out)
            if signum is not None:
                saved = (f"saved iteration {run.iteration} to {config.checkpoint.save}" if config.checkpoint.save
                         else "no --save given")
                raise StoppedBySignal(signum, f"stopped by {signal.Signals(signum).name} after iteration "
                                              f"{run.iteration}: {saved}")
            if timed_out:
                _say(f"infimed-train: --exit-duration-in-mins {minutes} reached after iteration {run.iteration}; "
                     f"stopping")
                break
    finally:
        if async_queue is not None:  # a save in flight finishes (and names itself) even on an error
            async_queue.maybe_finalize_async_calls(blocking=True)
            async_queue.close()
        logger.close()
    return record


def _save_if_due(run: Run, async_queue, stopping: bool) -> None:
    ckpt = run.config.checkpoint
    if async_queue is not None:
        async_queue.maybe_finalize_async_calls(blocking=False)
    due = ckpt.save_interval and run.iteration % ckpt.save_interval == 0
    if ckpt.save and (due or stopping or run.iteration == run.config.optim.train_iters):
        if async_queue is not None:  # one save in flight at a time
            async_queue.maybe_finalize_async_calls(blocking=True)
        checkpoint.save(ckpt.save, run, async_queue=async_queue)


def _say(line: str) -> None:
    if torch.distributed.get_rank() == 0:
        print(line, flush=True)
