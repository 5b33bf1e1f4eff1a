"""The training data loader: one per data-parallel rank, yielding one ``Pack`` per micro-batch.

    loader = build_train_loader(data, batch, model_config, tokenizer, dp_rank, dp_size, seed)
    pack = next(loader)              # Pack.concat of batch.micro_batch_size packs
    state = loader.state_dict()      # save with the checkpoint
    loader.load_state_dict(state)    # on a fresh loader, before the first next()

Workers (``DataConfig.num_workers`` streams per rank) run in DataLoader processes, or interleaved
in this process when ``worker_processes=False``; both give the same packs. The main process takes
samples from the workers in a fixed round robin (whatever order they arrive in), so the packer
input, and hence every pack, depends only on the seed and the data, never on timing.

A worker whose stream reads a whole epoch without one usable sample (every sample too long, every
shard missing, every member bad) stops, and a warning says why; the others go on, so a readable
shard keeps training. Once no worker of the rank is left producing, ``next`` raises
``NoUsableSamples`` with each stream's counts.

State = each worker's stream state after the last sample taken from it, the round-robin cursor,
which workers stopped and why, the packer's held samples (as raw shard bytes, re-decoded on
restore), the samples carried over from a reshard and the counters. It is tied to ``dp_size`` and
``num_workers`` (they define the split): a run resumed at another size reshards every saved rank's
state into one for each new rank (``reshard.reshard_loader_states``; the checkpoint loader does it),
which stays exactly once (a checkpoint saves the held samples apart from the rest,
``reshard.split_held``, so a reshard reads only those it deals to a rank). Loading one rank's state
elsewhere raises, unless ``reset=True``, which restarts every stream at the start of the furthest
saved epoch. A stopped worker stays stopped on resume, so the packs continue exactly; ``reset=True``
reads its stream again (after the data is repaired).

Tensor-parallel ranks share one reader and only the first and last pipeline stages need data:
the trainer builds this per data-parallel rank and broadcasts.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import Counter, deque
from collections.abc import Iterator

import torch

from megatron_infimed.config.presets import ModelConfig
from megatron_infimed.config.run import BatchSection, DataConfig
from megatron_infimed.data.blending import StreamItem, StreamSpec, WorkerStreams
from megatron_infimed.data.dry_spell import NoUsableSamples
from megatron_infimed.data.images import ImagePreprocessor
from megatron_infimed.data.pack import Pack
from megatron_infimed.data.pack_builder import PackLayout, build_pack, build_padded_batch
from megatron_infimed.data.packing import OnlinePacker
from megatron_infimed.data.preprocess import Sample, SamplePreprocessor
from megatron_infimed.data.streaming import DatasetIndex, ErrorRecord
from megatron_infimed.data.tokenizer import Tokenizer
from megatron_infimed.model.token_reduction import tokens_per_image

log = logging.getLogger(__name__)
# 2: worker states carry owed ranges, the state its shuffle window and the carried samples. A
# version-1 state still loads at its own layout; it cannot be resharded (no shuffle window).
STATE_VERSION = 2
DRY_WARNING_S = 60.0  # waiting this long for a usable sample is logged, with what was skipped meanwhile


class ErrorLog:
    """Counts bad input by reason and logs it at a bounded rate (first ``burst``, then one per interval)."""

    def __init__(self, burst: int = 10, interval_s: float = 60.0, keep: int = 100) -> None:
        self.counts: Counter[str] = Counter()
        self.recent: deque[dict] = deque(maxlen=keep)
        self.burst, self.interval_s, self._last, self._unlogged = burst, interval_s, 0.0, 0

    def add(self, record: ErrorRecord) -> None:
        self.counts[record.reason] += 1
        self.recent.append(record.to_dict())
        now = time.monotonic()
        if sum(self.counts.values()) <= self.burst or now - self._last >= self.interval_s:
            suffix = f" ({self._unlogged} more since the last message)" if self._unlogged else ""
            log.warning("skipped bad input [%s] shard=%s key=%s: %s%s", record.reason, record.shard,
                        record.key, record.message, suffix)
            self._last, self._unlogged = now, 0
        else:
            self._unlogged += 1


class TrainLoader:
    def __init__(self, spec: StreamSpec, config: DataConfig, batch: BatchSection, layout: PackLayout) -> None:
        self.spec, self.config, self.batch, self.layout = spec, config, batch, layout
        self.micro_batch_size = batch.micro_batch_size
        self.capacity = layout.capacity(batch.seq_length)
        self.packer: OnlinePacker[Sample] = OnlinePacker(self.capacity, config.packing_buffer,
                                                         config.packing_algorithm)
        workers = spec.num_workers
        self._starts: list[dict | None] = [None] * workers
        self._states: list[dict | None] = [None] * workers
        self._ended = [False] * workers
        self._barren: list[str | None] = [None] * workers  # why a worker stopped early
        self._cursor = 0
        self._ready: deque[list[Sample]] = deque()
        # Held by the saved ranks of a resharded state: packed first. Kept encoded (raw shard bytes)
        # until read: a rank of a much smaller run can inherit thousands of them.
        self._carry: deque[dict] = deque()
        self._finished = False
        self._source: Iterator[list[StreamItem]] | None = None  # groups from worker processes
        self._generators: list[Iterator[StreamItem]] = []
        self._inbox: list[deque[StreamItem]] = [deque() for _ in range(workers)]
        self.errors, self.dropped = ErrorLog(), Counter()
        self._skipped: Counter[str] = Counter()  # reasons skipped since the last sample, for DRY_WARNING_S
        self.counters: Counter[str] = Counter()

    # -- sample intake ------------------------------------------------------------------------
    def _start(self) -> None:
        if self.config.worker_processes:
            dataset = WorkerStreams(self.spec, self._starts)
            self._source = iter(torch.utils.data.DataLoader(dataset, batch_size=None,
                                                            num_workers=self.spec.num_workers,
                                                            collate_fn=_as_is))
        else:
            self._generators = [self.spec.worker_items(w, self._starts[w]) for w in range(self.spec.num_workers)]

    def _take(self, worker: int) -> StreamItem:
        if self._generators:
            return next(self._generators[worker])
        while not self._inbox[worker]:
            for item in next(self._source):  # type: ignore[arg-type]  # a group from one worker
                self._inbox[item.worker].append(item)
        return self._inbox[worker].popleft()

    def _next_sample(self) -> Sample | None:
        """The next sample: a carried one, else in worker round-robin order; None once every worker
        has ended."""
        if self._carry:
            return self._decode(self._carry.popleft())  # counted by the rank that read it
        if self._source is None and not self._generators:
            self._start()
        waiting_since = last_warning = time.monotonic()
        while not all(self._ended):
            worker = self._cursor
            item = self._take(worker)
            self._states[worker] = item.state
            for record in item.errors:
                self.errors.add(record)
            for record in item.drops:
                self.dropped[record.reason] += 1
            if item.sample is not None:
                self._cursor = self._following(worker)
                self._skipped.clear()
                self.counters["samples"] += 1
                self.counters["truncated"] += int(item.sample.truncated)
                return item.sample
            self._skipped.update(record.reason for record in item.errors + item.drops)
            if time.monotonic() - last_warning >= DRY_WARNING_S:
                last_warning = time.monotonic()
                log.warning("no usable sample for %.0f s; skipped since the last one: %s", last_warning - waiting_since,
                            ", ".join(f"{reason} {n}" for reason, n in self._skipped.most_common()))
            if not item.ended:
                continue  # bad input only: still this worker's turn, so the sample order is unchanged
            self._ended[worker], self._barren[worker] = True, item.barren
            self._cursor = self._following(worker)
            if item.barren:
                log.warning("%s; the stream stops", item.barren)
        if all(self._barren):
            raise NoUsableSamples(f"dp rank {self.spec.dp_rank}: no stream can produce a sample: "
                                  + " | ".join(self._barren))
        return None

    def _following(self, worker: int) -> int:
        n = len(self._ended)
        for step in range(1, n + 1):
            if not self._ended[(worker + step) % n]:
                return (worker + step) % n
        return worker

    # -- micro-batches ------------------------------------------------------------------------
    def __iter__(self) -> TrainLoader:
        return self

    def __next__(self) -> Pack:
        if not self.batch.packing:
            return self._next_padded_batch()
        while len(self._ready) < self.micro_batch_size and not self._finished:
            sample = self._next_sample()
            if sample is None:
                self._ready.extend(self.packer.flush())
                self._finished = True
            else:
                self._ready.extend(self.packer.add(sample, self.layout.slots(sample.length)))
        if not self._ready:
            raise StopIteration
        take = [self._ready.popleft() for _ in range(min(self.micro_batch_size, len(self._ready)))]
        packs = [build_pack(samples, self.layout) for samples in take]
        self._count(packs, slots=len(packs) * self.batch.seq_length)
        return Pack.concat(packs)

    def _next_padded_batch(self) -> Pack:
        samples = []
        while len(samples) < self.micro_batch_size and (sample := self._next_sample()) is not None:
            samples.append(sample)
        if not samples:
            raise StopIteration
        pack = build_padded_batch(samples, self.layout)
        self._count([pack], slots=pack.num_tokens)
        return pack

    def _count(self, packs: list[Pack], slots: int) -> None:
        c = self.counters
        c["packs"] += len(packs)
        c["slots"] += slots
        c["real_tokens"] += sum(p.num_real_tokens for p in packs)
        c["packed_samples"] += sum(len(p.sample_ids) for p in packs)
        c["images"] += sum(int(p.images.shape[0]) for p in packs)

    def stats(self) -> dict[str, float]:
        """Cumulative counters for the training metrics (diff two calls for per-step values)."""
        c = self.counters
        out = {
            "data/fill_ratio": c["real_tokens"] / c["slots"] if c["slots"] else 0.0,
            "data/samples_per_pack": c["packed_samples"] / c["packs"] if c["packs"] else 0.0,
            "data/packs": c["packs"], "data/samples": c["samples"], "data/truncated": c["truncated"],
            "data/images": c["images"], "data/held_samples": self.packer.num_held,
            "data/bad_inputs": sum(self.errors.counts.values()), "data/dropped": sum(self.dropped.values()),
        }
        out.update({f"data/bad/{k}": v for k, v in sorted(self.errors.counts.items())})
        out.update({f"data/dropped/{k}": v for k, v in sorted(self.dropped.items())})
        return out

    def recent_errors(self) -> list[dict]:
        """The last bad-input records: reason, shard, key, message."""
        return list(self.errors.recent)

    # -- state --------------------------------------------------------------------------------
    def _identity(self) -> dict:
        s = self.spec
        return {"dp_size": s.dp_size, "num_workers": s.num_workers, "seed": s.seed,
                "datasets": [[i.root, i.total] for i in s.indexes]}

    def state_dict(self) -> dict:
        def encode(sample: Sample) -> dict:
            return {"id": sample.sample_id, "raw": sample.raw}

        return {
            "version": STATE_VERSION, "dp_rank": self.spec.dp_rank, **self._identity(),
            "shuffle_buffer": self.spec.shuffle_buffer,  # the windows the stream positions count in
            "worker_states": [st if st is not None else start for st, start in zip(self._states, self._starts)],
            "ended": list(self._ended), "barren": list(self._barren), "cursor": self._cursor,
            "finished": self._finished,
            "packer": self.packer.state_dict(encode),
            "ready": [[encode(s) for s in pack] for pack in self._ready],
            "carry": list(self._carry),
            "counters": dict(self.counters), "errors": dict(self.errors.counts), "dropped": dict(self.dropped),
        }

    def load_state_dict(self, state: dict, reset: bool = False) -> None:
        if self._source is not None or self._generators:
            raise RuntimeError("load_state_dict must be called before the first next() of a loader")
        if state.get("version", 1) > STATE_VERSION:
            raise ValueError(f"loader state version {state['version']} is newer than this code's "
                             f"({STATE_VERSION}); resume with the version that saved it")
        saved, mine = {k: state.get(k) for k in self._identity()}, self._identity()
        saved["datasets"] = [list(d) for d in saved["datasets"] or []]
        if saved != mine or state.get("dp_rank") != self.spec.dp_rank:
            if not reset:
                diff = {k: (saved[k], mine[k]) for k in mine if saved[k] != mine[k]}
                raise ValueError(f"loader state does not match this loader (saved vs now: {diff}, dp_rank "
                                 f"{state.get('dp_rank')} vs {self.spec.dp_rank}); the data split would change. "
                                 f"{_MISMATCH_HINT}")
            epoch = max((e for ws in state["worker_states"] if ws for e, _ in ws["datasets"]), default=0)
            n = len(self.spec.indexes)
            self._starts = [{"datasets": [(epoch, 0)] * n, "counts": [0] * n, "done": [False] * n}
                            for _ in range(self.spec.num_workers)]
            log.warning("loader state reset: streams restart at epoch %d (saved %s, now %s)", epoch, saved, mine)
        else:
            if "held_samples" in state:
                raise ValueError("this loader state's held samples were saved apart (reshard.split_held): join "
                                 "them first (reshard.join_held; the checkpoint loader does it)")
            self._starts = list(state["worker_states"])
            self._ended, self._cursor = list(state["ended"]), state["cursor"]
            self._barren = list(state.get("barren") or self._barren)  # absent from states saved before it
            self._finished = state["finished"]
            if state["packer"] is not None:  # None: a resharded state, whose held samples are carried
                self.packer.load_state_dict(state["packer"], self._decode)
            self._ready = deque([self._decode(s) for s in pack] for pack in state["ready"])
            self._carry = deque(state.get("carry", ()))
        self.counters = Counter(state["counters"])
        self.errors.counts = Counter(state["errors"])
        self.dropped = Counter(state["dropped"])

    def _decode(self, encoded: dict) -> Sample:
        sample, _ = self.spec.fit(self.spec.preprocessor(encoded["raw"], encoded["id"]))
        if sample is None:
            raise ValueError(f"sample {encoded['id']} from the saved packer state no longer fits; was the "
                             f"tokenizer or sequence length changed?")
        return sample

    def close(self) -> None:
        self._source, self._generators = None, []


_MISMATCH_HINT = ("A changed data-parallel size or worker count is resharded from every saved rank's state "
                  "(reshard.reshard_loader_states; infimed-train does it on resume); other changes (seed, "
                  "datasets) cannot resume exactly: keep them, or restart the streams from the furthest saved "
                  "epoch (--reset-data-state in infimed-train; reset=True here)")


def build_train_loader(config: DataConfig, batch: BatchSection, model_config: ModelConfig, tokenizer: Tokenizer,
                       dp_rank: int, dp_size: int, seed: int, layout: PackLayout | None = None) -> TrainLoader:
    """The loader of one data-parallel rank; ``model_config.image_token_id`` must be the tokenizer's.
    ``layout``: the packs' alignment (``PackLayout.of(run_config)``); its pad id becomes the tokenizer's
    and its loss weighting ``batch.loss_weighting``."""
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank {dp_rank} is outside 0..{dp_size - 1}")
    if model_config.image_token_id != tokenizer.image_token_id:
        raise ValueError(f"model image_token_id {model_config.image_token_id} differs from the tokenizer's "
                         f"<|image_pad|> id {tokenizer.image_token_id}; use align_model_config(config, tokenizer)")
    vision = model_config.vision
    if not config.paths:
        raise ValueError("data.paths is empty; give at least one prepared dataset folder")
    layout = dataclasses.replace(layout or PackLayout(), loss_weighting=batch.loss_weighting, pad_id=tokenizer.pad_id)
    images = ImagePreprocessor.for_vision(vision, config.image_resize, config.jpeg_draft)
    preprocessor = SamplePreprocessor(tokenizer, tokens_per_image(model_config), images)
    spec = StreamSpec(
        indexes=tuple(DatasetIndex.from_dir(p) for p in config.paths),
        weights=config.weights or (1.0,) * len(config.paths), dp_rank=dp_rank, dp_size=dp_size,
        num_workers=config.num_workers, seed=seed, shuffle_buffer=config.shuffle_buffer,
        num_epochs=config.num_epochs, preprocessor=preprocessor, max_length=layout.capacity(batch.seq_length),
        overlong=config.overlong, shard_retries=config.shard_retries, shard_retry_delay=config.shard_retry_delay,
    )
    return TrainLoader(spec, config, batch, layout)


def _as_is(item: StreamItem) -> StreamItem:
    """DataLoader collate for single items: pass the StreamItem through untouched."""
    return item
