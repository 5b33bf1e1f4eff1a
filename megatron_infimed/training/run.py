"""A training run's state, built in one direction: configuration → model config and tokenizer →
data source → model chunks → DDP → optimizer and schedule.

``Run`` holds every part a step changes and a checkpoint saves; ``state_dict`` lists them in one
place, so ``checkpoint.save(root, run)`` cannot forget one (torchtitan's checkpoint manager is
handed its stateful parts the same way).
"""

from __future__ import annotations

from dataclasses import dataclass

from megatron.core import parallel_state

from megatron_infimed.checkpoint import dist as checkpoint
from megatron_infimed.config.presets import ModelConfig
from megatron_infimed.config.run import RunConfig
from megatron_infimed.training.feed import StepFeed, build_source, reads_data
from megatron_infimed.training.setup import build_model_chunks, build_optimizer, freeze, resolve_model, wrap_ddp


@dataclass(frozen=True)
class StepShape:
    """How a step divides: ``global_batch_size`` packed sequences = micro-batches × DP ranks."""

    data_parallel_size: int
    global_batch_size: int
    num_microbatches: int

    @classmethod
    def of(cls, config: RunConfig) -> StepShape:
        dp = parallel_state.get_data_parallel_world_size()
        mbs = config.batch.micro_batch_size
        gbs = config.batch.global_batch_size or mbs * dp
        if gbs % (mbs * dp):
            raise ValueError(f"--global-batch-size {gbs} must be a multiple of micro-batch size × data-parallel "
                             f"size = {mbs} × {dp}")
        return cls(dp, gbs, gbs // (mbs * dp))


@dataclass
class Run:
    config: RunConfig
    model_config: ModelConfig
    shape: StepShape
    chunks: list  # the InfiMedModel chunks: what checkpoints store
    model: list  # the same chunks wrapped (Float16Module, DDP): what the schedule runs
    optimizer: object
    scheduler: object
    feed: StepFeed
    iteration: int = 0
    consumed_samples: int = 0

    def sharded_state_dict(self) -> dict:
        """Model, optimizer, schedule and counters, as megatron-core ``dist_checkpointing`` saves them."""
        model = checkpoint.model_state(self.chunks)
        return {**model, "optimizer": checkpoint.optimizer_state(self.optimizer, model),
                "scheduler": self.scheduler.state_dict(), "iteration": self.iteration,
                "consumed_samples": self.consumed_samples}

    def load_sharded_state_dict(self, loaded: dict) -> None:
        for i, chunk in enumerate(self.chunks):
            checkpoint.load_module_state(chunk, loaded[f"model{i}"])
        self.optimizer.load_state_dict(loaded["optimizer"])
        self.scheduler.load_state_dict(loaded["scheduler"])
        self.iteration, self.consumed_samples = int(loaded["iteration"]), int(loaded["consumed_samples"])


def build_run(config: RunConfig, resume: bool) -> Run:
    """Every part of a run, on this rank. A new run (not ``resume``) starts from
    ``--pretrained-checkpoint``'s weights when one is given."""
    shape = StepShape.of(config)
    model_config, tokenizer = resolve_model(config)
    source = (build_source(config, model_config, tokenizer, parallel_state.get_data_parallel_rank(),
                           shape.data_parallel_size, shape.num_microbatches) if reads_data() else None)
    chunks = build_model_chunks(config, model_config)
    if config.checkpoint.pretrained_checkpoint and not resume:
        checkpoint.load_weights(config.checkpoint.pretrained_checkpoint, chunks, config.checkpoint.verify_checkpoint)
    freeze(chunks, config.model)
    model = wrap_ddp(chunks, config)
    optimizer, scheduler = build_optimizer(model, config)
    feed = StepFeed(source, shape.num_microbatches, len(model))
    return Run(config, model_config, shape, chunks, model, optimizer, scheduler, feed)
