"""Where a run's micro-batches come from: ``--mock-data`` or the shard loader.

Every micro-batch leaves here padded to exactly ``seq_length × micro_batch_size`` slots: pipeline
stages exchange activations of a fixed shape. The padding is one extra segment with no loss, so
it changes no sample's result (it only costs compute, which ``fill_ratio`` reports).
"""

from __future__ import annotations

import dataclasses

from megatron.core import parallel_state

from megatron_infimed.config.presets import ModelConfig
from megatron_infimed.data.loader import DataConfig, build_train_loader
from megatron_infimed.data.pack_builder import PackLayout
from megatron_infimed.data.tokenizer import align_model_config, load_tokenizer
from megatron_infimed.training.config import TrainConfig
from megatron_infimed.training.mock_data import MockDataIterator
from megatron_infimed.training.setup import model_config_for


def data_config_for(config: TrainConfig) -> DataConfig:
    """The YAML ``data`` section, plus the run-level settings the loader shares with training."""
    known = {f.name for f in dataclasses.fields(DataConfig)}
    run_level = {"seq_length", "packing", "loss_weighting", "seed"}
    unknown = sorted(set(config.data) - known)
    clashing = sorted(set(config.data) & run_level)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in the 'data' section; known: {sorted(known - run_level)}")
    if clashing:
        raise ValueError(f"set {clashing} at the top level of the config, not in 'data'")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in config.data.items()}
    return DataConfig(**values, seq_length=config.seq_length, packing=not config.no_packing,
                      loss_weighting=config.loss_weighting, seed=config.seed)


class LoaderSource:
    """The shard loader seen through the interface the training loop uses."""

    def __init__(self, loader, slots: int, pad_id: int, reset: bool):
        self.loader, self.slots, self.pad_id, self.reset = loader, slots, pad_id, reset

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.loader).padded_to(self.slots, self.pad_id)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state, reset=self.reset)

    def stats(self) -> dict:
        stats = self.loader.stats()
        return {**stats, "skipped": stats["data/bad_inputs"] + stats["data/dropped"]}


def build_data_source(config: TrainConfig, dp_size: int, num_microbatches: int,
                      reads: bool = True) -> tuple[object | None, ModelConfig]:
    """(source of padded Packs for this data-parallel rank, the model config it was built for).
    A rank that does not read (``reads=False``: not its replica's first stage, tensor-parallel
    rank 0; see ``feed``) gets no source, only the config (tokenizer-aligned, as the reader's)."""
    dp_rank = parallel_state.get_data_parallel_rank()
    slots = config.seq_length * config.micro_batch_size
    if config.mock_data:
        model_config = model_config_for(config)
        if not reads:
            return None, model_config
        layout = PackLayout(loss_weighting=config.loss_weighting, context_parallel=config.context_parallel_size,
                            fp8=bool(config.fp8), image_mean=model_config.vision.image_mean,
                            image_std=model_config.vision.image_std)
        return MockDataIterator(model_config, config.seq_length, config.micro_batch_size, config.seed,
                                dp_rank, dp_size, num_microbatches, config.reset_data_state, layout), model_config
    if not config.tokenizer:
        raise ValueError("training on shards needs --tokenizer (a SentencePiece .model or a tokenizer.json)")
    tokenizer = load_tokenizer(config.tokenizer)
    model_config = align_model_config(model_config_for(config), tokenizer)
    data_config = data_config_for(config)  # checked on every rank, so a bad section fails everywhere
    if not reads:
        return None, model_config
    loader = build_train_loader(data_config, model_config, tokenizer, dp_rank, dp_size,
                                micro_batch_size=config.micro_batch_size,
                                context_parallel=config.context_parallel_size, fp8=bool(config.fp8))
    return LoaderSource(loader, slots, tokenizer.pad_id, config.reset_data_state), model_config
