"""What one loader worker produces: datasets blended by weight, decoded, tokenized, fitted.

Blending is deterministic, as Megatron's blended dataset: draw ``n`` goes to the dataset whose
count lags its share the most, ``argmax_d(w_d * (n + 1) - count_d)``. After ``n`` draws every
dataset holds its share to within one sample, and the counts are the whole blending state (no
RNG state to carry). A dataset whose epochs run out (``num_epochs``) leaves the blend.

A worker's state is, per dataset, the stream's ``(epoch, position)`` and the ranges it still owes
(``streaming.OwedRange``, from a reshard), plus the blend counts and which datasets are done.

Each good sample leaves the worker as a ``StreamItem`` carrying the worker's state *after* it and
the bad inputs met since the previous item. The main process keeps the state of the last item it
consumed, so a resume starts each worker exactly after that item, and prefetched items that were
never consumed are simply produced again. While no good sample comes, the bad inputs leave in
sample-less reports of at most ``REPORT_EVERY``, so they are counted and logged meanwhile.

A worker that reads a whole epoch of every dataset it blends without one usable sample stops
(see ``dry_spell``): its last item is ``ended`` with ``barren`` saying why.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice

import torch

from megatron_infimed.data.dry_spell import DrySpell
from megatron_infimed.data.preprocess import BadSample, Sample, SamplePreprocessor, fit_to_length
from megatron_infimed.data.streaming import DatasetIndex, DatasetStream, ErrorRecord, RawEntry

REPORT_EVERY = 64  # bad inputs a worker holds at most before handing them on without a sample


@dataclass
class StreamItem:
    worker: int
    sample: Sample | None  # None: a report of bad input only, or the end of the stream if ``ended``
    state: dict
    errors: list[ErrorRecord] = field(default_factory=list)  # bad input, skipped
    drops: list[ErrorRecord] = field(default_factory=list)  # decoded but overlong and dropped
    ended: bool = False
    barren: str | None = None  # why the stream stopped early: a whole epoch gave no usable sample


def pick_dataset(weights: Sequence[float], counts: Sequence[int], active: Sequence[bool]) -> int:
    """The active dataset furthest below its share after one more draw (lowest index on ties)."""
    n = sum(counts) + 1
    best, best_gap = -1, float("-inf")
    for d, (w, c, a) in enumerate(zip(weights, counts, active)):
        if a and w * n - c > best_gap:
            best, best_gap = d, w * n - c
    return best


@dataclass(frozen=True, kw_only=True)
class StreamSpec:
    """Everything a worker needs to produce its samples; built once per rank by the loader."""

    indexes: tuple[DatasetIndex, ...]
    weights: tuple[float, ...]
    dp_rank: int
    dp_size: int
    num_workers: int
    seed: int
    shuffle_buffer: int
    num_epochs: int | None
    preprocessor: SamplePreprocessor
    max_length: int
    overlong: str
    shard_retries: int = 2
    shard_retry_delay: float = 0.5

    @property
    def num_streams(self) -> int:
        return self.dp_size * self.num_workers

    def worker_items(self, worker: int, start: dict | None = None) -> Iterator[StreamItem]:
        stream_id = self.dp_rank * self.num_workers + worker
        streams = [DatasetStream(index, d, stream_id, self.num_streams, seed=self.seed,
                                 shuffle_buffer=self.shuffle_buffer, num_epochs=self.num_epochs,
                                 retries=self.shard_retries, retry_delay=self.shard_retry_delay)
                   for d, index in enumerate(self.indexes)]
        counts = [0] * len(streams)
        done = [False] * len(streams)
        if start is not None:
            owed = start.get("owed") or [()] * len(streams)  # absent from states saved before resharding
            for stream, position, ranges in zip(streams, start["datasets"], owed):
                stream.restore(position, ranges)
            counts, done = list(start["counts"]), list(start["done"])
        iterators = [iter(s) for s in streams]
        total = sum(self.weights)
        weights = [w / total for w in self.weights]
        spell = DrySpell(streams, weights)

        def state() -> dict:
            return {"datasets": [s.state() for s in streams], "counts": list(counts), "done": list(done),
                    "owed": [s.owed_state() for s in streams]}

        errors: list[ErrorRecord] = []
        drops: list[ErrorRecord] = []
        while not all(done):
            d = pick_dataset(weights, counts, [not x for x in done])
            entry = next(iterators[d], None)
            if entry is None:
                done[d] = True
                continue
            counts[d] += 1
            sample, problem, dropped = self._prepare(entry)
            if sample is not None:
                yield StreamItem(worker, sample, state(), errors, drops)
                errors, drops = [], []
                spell.reset()
                continue
            (drops if dropped else errors).append(problem)
            spell.add(problem, dropped)
            if spell.spans_an_epoch():
                break
            if len(errors) + len(drops) >= REPORT_EVERY:
                yield StreamItem(worker, None, state(), errors, drops)
                errors, drops = [], []
        barren = None
        if spell.spans_an_epoch():
            barren = spell.describe(f"stream {stream_id} of {self.num_streams} (dp rank {self.dp_rank}, worker "
                                    f"{worker})", self.max_length)
            done[:] = [True] * len(done)  # a resumed worker must not read the barren stream again
        yield StreamItem(worker, None, state(), errors, drops, ended=True, barren=barren)

    def _prepare(self, entry: RawEntry) -> tuple[Sample | None, ErrorRecord | None, bool]:
        """``(sample, None, False)``, or ``(None, record, dropped)``: bad input, or too long to fit."""
        if entry.error is not None:
            return None, entry.error, False
        try:
            sample = self.preprocessor(entry.members, entry.key)
        except BadSample as exc:
            return None, ErrorRecord(exc.reason, entry.shard, entry.key, str(exc)), False
        fitted, reason = self.fit(sample)
        if fitted is None:
            return None, ErrorRecord(reason, entry.shard, entry.key,
                                     f"sample {sample.sample_id}: {sample.length} tokens > {self.max_length}"), True
        return fitted, None, False

    def fit(self, sample: Sample) -> tuple[Sample | None, str | None]:
        p = self.preprocessor
        return fit_to_length(sample, self.max_length, self.overlong, p.tokenizer.image_token_id, p.image_tokens)


class WorkerStreams(torch.utils.data.IterableDataset):
    """The spec as a torch IterableDataset: each DataLoader worker process runs its own stream.

    Items cross the process boundary in groups of ``group`` (the last may be shorter), their
    tensors moved into two shared storages per group (see ``share_storage``): every storage a
    worker sends is a shared-memory segment plus a file descriptor passed over a socket, and at
    three per sample that handover cost as much as decoding the image."""

    def __init__(self, spec: StreamSpec, starts: list[dict | None], group: int = 16) -> None:
        super().__init__()
        if group < 1:
            raise ValueError(f"WorkerStreams group must be >= 1, got {group}")
        self.spec, self.starts, self.group = spec, starts, group

    def __iter__(self) -> Iterator[list[StreamItem]]:
        info = torch.utils.data.get_worker_info()
        if info is None or info.num_workers != self.spec.num_workers:
            raise RuntimeError(f"WorkerStreams must run in a DataLoader with num_workers="
                               f"{self.spec.num_workers} (got {None if info is None else info.num_workers})")
        # Decoding is the work here; one intra-op thread per worker avoids oversubscribing cores.
        torch.set_num_threads(1)
        items = self.spec.worker_items(info.id, self.starts[info.id])
        while group := list(islice(items, self.group)):
            yield share_storage(group)


def share_storage(items: list[StreamItem]) -> list[StreamItem]:
    """Make the items' samples views into one id/label storage and one pixel storage (values
    unchanged), so a group pickles to two shared-memory segments instead of three per sample."""
    samples = [item.sample for item in items if item.sample is not None]
    if not samples:
        return items
    ids = torch.cat([torch.cat([s.input_ids, s.labels]) for s in samples])
    pixels = torch.cat([s.pixels.reshape(-1) for s in samples])
    at_ids = at_pixels = 0
    for s in samples:
        n, k = s.input_ids.numel(), s.pixels.numel()
        s.input_ids, s.labels = ids[at_ids:at_ids + n], ids[at_ids + n:at_ids + 2 * n]
        s.pixels = pixels[at_pixels:at_pixels + k].view(s.pixels.shape)
        at_ids, at_pixels = at_ids + 2 * n, at_pixels + k
    return items
