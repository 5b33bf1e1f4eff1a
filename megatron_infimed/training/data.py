"""Where a run's micro-batches come from: ``--mock-data`` or the shard loader."""

from __future__ import annotations

from megatron.core import parallel_state

from megatron_infimed.training.config import TrainConfig
from megatron_infimed.training.mock_data import MockDataIterator
from megatron_infimed.training.setup import model_config_for


def build_data_source(config: TrainConfig, dp_size: int, num_microbatches: int):
    """(source of Packs for this data-parallel rank, tokenizer or None for mock data)."""
    dp_rank = parallel_state.get_data_parallel_rank()
    if config.mock_data:
        return MockDataIterator(model_config_for(config), config.seq_length, config.micro_batch_size, config.seed,
                                dp_rank, dp_size, num_microbatches), None
    raise NotImplementedError("shard data lands with the loader")
