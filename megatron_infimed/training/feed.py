"""A step's packs from the reader to the device: the one module that owns them.

    source (PackSource: the shard loader padded to the micro-batch, or --mock-data)
      │  stage 0, tp 0 reads the step's ``num_microbatches`` packs          StepFeed.next_step
      ▼
    pipeline hand-over: tokens, labels, loss weights, positions,            _send_along_pipeline
      │  cu_seqlens, counts to every later stage's tp 0 / cp 0 rank (one
      │  broadcast per tensor kind over the pipeline group); images stay
      │  on stage 0
      ▼
    tensor- and context-parallel hand-over + device: as its micro-batch     micro_batch
       runs, each stage's tp 0 / cp 0 rank moves the pack to its device and
       broadcasts it to its tensor × context-parallel group (each CP rank
       then keeps its own chunks of it, inside the model)

Only the first pipeline stage's tensor- and context-parallel rank 0 reads (decodes images,
tokenises, packs): ``reads_data()``. Later stages get each pack with its images replaced by an empty [K, 3, 0, 0]
placeholder that keeps the image count.

Images go to the first stage only: its vision encoder is the only user, and they are most of a
pack's bytes. The loader's counters travel with the packs, so the last stage logs them.

The step is sent whole, before megatron-core's schedule runs, so these collectives never
interleave with the schedule's point-to-point traffic, whose order differs from stage to stage.
Every model chunk of a rank (virtual pipelining) iterates over the same list.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Protocol

import torch
from megatron.core import parallel_state

from megatron_infimed.config.presets import ModelConfig
from megatron_infimed.config.run import RunConfig
from megatron_infimed.data.loader import build_train_loader
from megatron_infimed.data.pack import TENSOR_FIELDS, Pack
from megatron_infimed.data.pack_builder import PackLayout
from megatron_infimed.data.tokenizer import Tokenizer
from megatron_infimed.runtime import distributed
from megatron_infimed.training.mock_data import MockDataIterator

# What later stages need of a pack; the images stay on the first stage.
_SENT = tuple(name for name in TENSOR_FIELDS if name != "images")


class PackSource(Protocol):
    """Where a data-parallel rank's micro-batches come from: each one a ``Pack`` of exactly
    ``batch.micro_batch_slots`` slots (pipeline stages exchange activations of a fixed shape),
    with state that a checkpoint saves and a resume restores."""

    def __next__(self) -> Pack: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def stats(self) -> dict: ...


class ShardSource:
    """The shard loader as a ``PackSource``: each pack padded to the micro-batch's slots with one
    extra segment that carries no loss (it costs compute, which ``fill_ratio`` reports)."""

    def __init__(self, loader, slots: int, pad_id: int, reset: bool):
        self.loader, self.slots, self.pad_id, self.reset = loader, slots, pad_id, reset

    def __iter__(self):
        return self

    def __next__(self) -> Pack:
        return next(self.loader).padded_to(self.slots, self.pad_id)

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state, reset=self.reset)

    def stats(self) -> dict:
        stats = self.loader.stats()
        return {**stats, "skipped": stats["data/bad_inputs"] + stats["data/dropped"]}


def build_source(config: RunConfig, model_config: ModelConfig, tokenizer: Tokenizer | None, dp_rank: int,
                 dp_size: int, num_microbatches: int) -> PackSource:
    """This data-parallel rank's source: mock packs, or the shard loader over ``config.data``."""
    batch = config.batch
    if config.data.mock_data:
        return MockDataIterator(model_config, batch.seq_length, batch.micro_batch_size, config.optim.seed,
                                dp_rank, dp_size, num_microbatches, config.data.reset_data_state,
                                PackLayout.of(config))
    loader = build_train_loader(config.data, batch, model_config, tokenizer, dp_rank, dp_size, config.optim.seed,
                                PackLayout.of(config, tokenizer.pad_id))
    return ShardSource(loader, batch.micro_batch_slots, tokenizer.pad_id, config.data.reset_data_state)


def reads_data() -> bool:
    """Is this rank its model replica's reader (first pipeline stage, tensor- and context-parallel
    rank 0)?"""
    return (parallel_state.get_tensor_model_parallel_rank() == 0
            and parallel_state.get_context_parallel_rank() == 0
            and parallel_state.is_pipeline_first_stage(ignore_virtual=True))


class StepFeed:
    """The training loop's view of the data: ``next_step()`` before each step, then the loader's
    ``stats``/``state_dict`` as the reader's source has them."""

    def __init__(self, source: PackSource | None, num_microbatches: int, num_chunks: int):
        self.source, self.num_microbatches, self.num_chunks = source, num_microbatches, num_chunks
        self._stats: dict = {}
        self.wait_seconds = 0.0

    def next_step(self) -> list[Iterator[Pack]]:
        """This step's packs, one iterator per model chunk (empty on tensor-parallel ranks > 0)."""
        packs: list[Pack] = []
        start = time.perf_counter()
        if self.source is not None:
            # Packs stay where the loader made them (host memory) until their micro-batch runs.
            packs = [next(self.source) for _ in range(self.num_microbatches)]
            self._stats = self.source.stats()
        if (parallel_state.get_tensor_model_parallel_rank() == 0 and parallel_state.get_context_parallel_rank() == 0
                and parallel_state.get_pipeline_model_parallel_world_size() > 1):
            packs, self._stats = _send_along_pipeline(packs, self._stats)
        self.wait_seconds += time.perf_counter() - start
        return [iter(packs) for _ in range(self.num_chunks)]

    def stats(self) -> dict:
        return self._stats

    def state_dict(self) -> dict:
        if self.source is None:
            raise RuntimeError("only the reading rank (first pipeline stage, tensor-parallel rank 0) has "
                               "loader state")
        return self.source.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if self.source is not None:
            self.source.load_state_dict(state)

    def take_wait_seconds(self) -> float:
        seconds, self.wait_seconds = self.wait_seconds, 0.0
        return seconds


def micro_batch(data_iterator: Iterator[Pack], check) -> Pack:
    """The next pack of this step on this rank's device: tensor- and context-parallel rank 0 takes
    it from the step's list, checks it on the host with ``check`` (the model's ``check_pack``:
    lengths and image counts, so the device never syncs to check them) and moves it (each pack
    reaches the device when its micro-batch runs, not a whole step's images at once), then sends
    it to the rest of its tensor × context-parallel group."""
    local = None
    sender = (parallel_state.get_tensor_model_parallel_rank() == 0
              and parallel_state.get_context_parallel_rank() == 0)
    if sender:
        local = next(data_iterator)
        check(local)
        local = local.to(distributed.device())
    group = parallel_state.get_tensor_and_context_parallel_group()
    if group.size() == 1:
        return local
    # megatron orders ranks tp fastest, then cp: the group's first rank is its tp 0 / cp 0 rank.
    src = min(torch.distributed.get_process_group_ranks(group))
    if sender != (torch.distributed.get_rank() == src):
        raise RuntimeError(f"rank {torch.distributed.get_rank()}: the tensor × context-parallel group's first rank "
                           f"{src} is not its tp 0 / cp 0 reader (an unexpected megatron rank order)")
    packs, _ = broadcast_packs([local] if local is not None else None, src, group)
    return packs[0]


def _send_along_pipeline(packs: list[Pack], stats: dict) -> tuple[list[Pack], dict]:
    """From the first stage to every later stage of this pipeline (tensor-parallel rank 0 ranks)."""
    sender = parallel_state.is_pipeline_first_stage(ignore_virtual=True)
    return broadcast_packs(packs if sender else None, parallel_state.get_pipeline_model_parallel_first_rank(),
                           parallel_state.get_pipeline_model_parallel_group(), _SENT, stats)


def broadcast_packs(packs: list[Pack] | None, src: int, group, fields: tuple[str, ...] = TENSOR_FIELDS,
                    extra=None) -> tuple[list[Pack], object]:
    """The sender's ``packs`` (and ``extra``, any picklable value) on every rank of ``group``; the
    sender passes them, the others None. One object broadcast carries shapes and metadata, then one
    broadcast per field carries that field of all packs at once. A field not sent (the images)
    arrives as an empty [K, 3, 0, 0] placeholder that keeps the image count."""
    sender = packs is not None
    header = [None]
    if sender:
        header = [{"extra": extra, "packs": [
            {"sizes": {name: tuple(getattr(p, name).shape) for name in fields},
             "dtypes": {name: getattr(p, name).dtype for name in fields},
             "sample_ids": p.sample_ids, "images_per_sample": p.images_per_sample, "num_padding": p.num_padding,
             "padding_ranges": p.padding_ranges,
             "image_shape": tuple(p.images.shape[1:]), "host_facts": p.host_facts()}
            for p in packs]}]
    torch.distributed.broadcast_object_list(header, src=src, group=group)
    meta = header[0]["packs"]
    flat = {}
    for name in fields:
        if sender:  # NCCL sends device tensors
            parts = [getattr(p, name).reshape(-1) for p in packs]
            flat[name] = (parts[0] if len(parts) == 1 else torch.cat(parts)).to(distributed.device())
        else:
            total = sum(torch.Size(m["sizes"][name]).numel() for m in meta)
            flat[name] = torch.empty(total, dtype=meta[0]["dtypes"][name], device=distributed.device())
        if flat[name].numel():
            torch.distributed.broadcast(flat[name], src=src, group=group)
    if sender:
        return packs, header[0]["extra"]
    received, offsets = [], dict.fromkeys(fields, 0)
    for m in meta:
        tensors = {}
        for name in fields:
            size = torch.Size(m["sizes"][name])
            tensors[name] = flat[name][offsets[name]:offsets[name] + size.numel()].view(size)
            offsets[name] += size.numel()
        if "images" not in tensors:  # the count, no pixels
            tensors["images"] = torch.empty(sum(m["images_per_sample"]), m["image_shape"][0], 0, 0,
                                            device=distributed.device())
        pack = Pack(**tensors, sample_ids=m["sample_ids"], images_per_sample=m["images_per_sample"],
                    num_padding=m["num_padding"], padding_ranges=m["padding_ranges"])
        received.append(pack.with_host_facts(m["host_facts"]))  # the sender's host values: no sync here
    return received, header[0]["extra"]
