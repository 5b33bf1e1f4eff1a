"""Reading WebDataset shards as per-stream sample sequences, exactly once per epoch.

A *stream* is one (data-parallel rank, loader worker) pair: ``stream = dp_rank * workers + worker``
of ``num_streams = dp_size * workers``. How an epoch is split among streams:

| split                                   | exactly once                    | balance     |
|-----------------------------------------|---------------------------------|-------------|
| whole shards, round robin               | only if streams divide shards   | per shard   |
| contiguous sample ranges (this module)  | always                          | ±1 sample   |

Each epoch lays the shards end to end (in a seeded order that changes per epoch) and gives stream
``s`` the samples ``[s*T//N, (s+1)*T//N)`` of that order (``T`` from manifest.json). A stream
opens only its shards and skips, without decoding, the part of a boundary shard that is not its
own, so any shard count, any size mix and any ranks × workers combination is exact.

Shuffling is a seeded window shuffle: the stream's sequence is cut into windows of
``shuffle_buffer`` samples, each read whole and emitted in a permutation drawn from
``(seed, dataset, epoch, stream, window)``. Unlike a reservoir buffer, the position alone is the
whole state (``(epoch, position)``), so a resume re-reads one window and continues exactly.

A stream can also *owe* samples: ranges of positions of another layout's stream sequence
(``OwedRange``), handed to it when a run resumes at another data-parallel size or worker count
(``reshard``). It reads them, in order, before its own epochs. A range names everything its
sequence depends on (epoch, stream, stream count, shuffle window), so it reads the same samples
whatever the reading stream's own layout is, and its state is just the ranges left.

Bad input never stops a stream: a shard that cannot be opened is retried, then each of its
positions becomes an ``ErrorRecord``; a tar that breaks mid-way records its remaining positions;
the stream always advances by exactly the manifest's count, so positions stay meaningful.
"""

from __future__ import annotations

import bisect
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, astuple, dataclass, replace
from pathlib import Path

import numpy as np
from webdataset.tariterators import group_by_keys, tar_file_iterator


@dataclass(frozen=True)
class ErrorRecord:
    reason: str
    shard: str
    key: str
    message: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RawEntry:
    """One position of a shard: its members (``{"json": b"...", "jpg": b"..."}``) or the error."""

    shard: str
    key: str
    members: dict[str, bytes] | None = None
    error: ErrorRecord | None = None


@dataclass(frozen=True)
class ShardSpec:
    path: str
    samples: int


@dataclass(frozen=True)
class DatasetIndex:
    """The shards of one prepared dataset, from its ``manifest.json``."""

    root: str
    shards: tuple[ShardSpec, ...]

    @classmethod
    def from_dir(cls, root: str | os.PathLike) -> DatasetIndex:
        manifest = Path(root) / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"dataset {root} has no manifest.json (expected the output folder of "
                                    f"infimed-prepare)")
        try:
            data = json.loads(manifest.read_text())
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
            raise ValueError(f"{manifest} is not valid JSON ({exc}); expected the manifest written by "
                             f"infimed-prepare") from None
        try:
            shards = tuple(ShardSpec(str(Path(root) / s["path"]), int(s["samples"])) for s in data["shards"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{manifest}: each entry of 'shards' needs 'path' and 'samples' ({exc})") from None
        if not shards:
            raise ValueError(f"{manifest} lists no shards")
        return cls(str(root), shards)

    @property
    def total(self) -> int:
        return sum(s.samples for s in self.shards)


def stream_range(total: int, stream: int, num_streams: int) -> tuple[int, int]:
    """The half-open slice of an epoch's sample order owned by ``stream``."""
    return stream * total // num_streams, (stream + 1) * total // num_streams


@dataclass(frozen=True)
class OwedRange:
    """Positions ``[lo, hi)`` of ``epoch`` in the sequence of stream ``stream`` of ``num_streams``,
    window-shuffled with ``shuffle_buffer``: samples of a dataset that a stream of an earlier layout
    had not read yet. Saved as a plain tuple (``astuple``)."""

    epoch: int
    stream: int
    num_streams: int
    shuffle_buffer: int
    lo: int
    hi: int

    @property
    def size(self) -> int:
        return self.hi - self.lo

    def check(self, total: int) -> OwedRange:
        lo, hi = stream_range(total, self.stream, self.num_streams)
        if not (0 <= self.stream < self.num_streams and 0 <= self.lo < self.hi <= hi - lo and self.epoch >= 0
                and self.shuffle_buffer >= 0):
            raise ValueError(f"owed range {self} does not fit a dataset of {total} samples (stream "
                             f"{self.stream} of {self.num_streams} has {hi - lo}); was the dataset changed?")
        return self


def _open_with_retries(path: str, retries: int, retry_delay: float):
    for attempt in range(retries + 1):
        try:
            return open(path, "rb")
        except OSError as exc:
            last = exc
            if attempt < retries:
                time.sleep(retry_delay * 2**attempt)
    raise last


def read_shard(path: str, lo: int, hi: int, retries: int = 2, retry_delay: float = 0.5) -> Iterator[RawEntry]:
    """Exactly ``hi - lo`` entries for the shard's sample positions ``lo .. hi-1``."""
    try:
        stream = _open_with_retries(path, retries, retry_delay)
    except OSError as exc:
        for i in range(lo, hi):
            yield RawEntry(path, f"#{i}", error=ErrorRecord("shard_unopenable", path, f"#{i}",
                                                            f"cannot open after {retries + 1} tries: {exc}"))
        return
    position = 0
    with stream:
        files = ({**f, "__url__": path} for f in tar_file_iterator(stream))
        try:
            for sample in group_by_keys(files):
                if position >= lo:
                    members = {k: v for k, v in sample.items() if not k.startswith("__")}
                    yield RawEntry(path, sample["__key__"], members)
                position += 1
                if position >= hi:
                    break
        except Exception as exc:  # tarfile raises several types on corrupt headers; all end this shard
            reason, message = "shard_read_error", f"tar unreadable after {position} samples: {exc}"
        else:
            reason, message = "shard_shorter_than_manifest", f"shard ended after {position} samples"
    for i in range(max(position, lo), hi):
        yield RawEntry(path, f"#{i}", error=ErrorRecord(reason, path, f"#{i}", message))


class DatasetStream:
    """One dataset as seen by one stream: epochs of its range, window-shuffled, with (epoch, position)."""

    def __init__(self, index: DatasetIndex, dataset_id: int, stream: int, num_streams: int, *, seed: int,
                 shuffle_buffer: int, num_epochs: int | None = None, retries: int = 2,
                 retry_delay: float = 0.5) -> None:
        self.index, self.dataset_id, self.stream, self.num_streams = index, dataset_id, stream, num_streams
        self.seed, self.window = seed, max(1, shuffle_buffer)
        self.shuffle = shuffle_buffer > 0
        self.num_epochs, self.retries, self.retry_delay = num_epochs, retries, retry_delay
        self.epoch, self.position = 0, 0
        self.owed: list[OwedRange] = []  # read first, front to back
        self.lo, self.hi = stream_range(index.total, stream, num_streams)

    @property
    def length(self) -> int:
        return self.hi - self.lo

    def state(self) -> tuple[int, int]:
        """``(epoch, position)`` in the stream's own sequence (what is owed is ``owed_state``)."""
        return self.epoch, self.position

    def owed_state(self) -> list[tuple[int, ...]]:
        return [astuple(r) for r in self.owed]

    def restore(self, state: tuple[int, int], owed=()) -> None:
        self.epoch, self.position = int(state[0]), int(state[1])
        self.owed = [OwedRange(*map(int, r)).check(self.index.total) for r in owed]

    def shard_order(self, epoch: int) -> list[int]:
        n = len(self.index.shards)
        if not self.shuffle:
            return list(range(n))
        return np.random.default_rng([self.seed, self.dataset_id, epoch]).permutation(n).tolist()

    def _sequential(self, epoch: int, start: int) -> Iterator[RawEntry]:
        """The stream's own samples of ``epoch`` in shard order, from local index ``start``."""
        order = self.shard_order(epoch)
        sizes = [self.index.shards[k].samples for k in order]
        cumulative = np.concatenate([[0], np.cumsum(sizes)]).tolist()
        g = self.lo + start
        k = bisect.bisect_right(cumulative, g) - 1
        while g < self.hi and k < len(order):
            shard = self.index.shards[order[k]]
            lo, hi = g - cumulative[k], min(shard.samples, self.hi - cumulative[k])
            yield from read_shard(shard.path, lo, hi, self.retries, self.retry_delay)
            g, k = cumulative[k] + hi, k + 1

    def _epoch(self, epoch: int, start: int) -> Iterator[tuple[int, RawEntry]]:
        first_window = start // self.window
        reader = self._sequential(epoch, first_window * self.window)
        for w in range(first_window, -(-self.length // self.window)):
            base = w * self.window
            entries = [next(reader) for _ in range(min(self.window, self.length - base))]
            order = (np.random.default_rng([self.seed, self.dataset_id, epoch, self.stream, w])
                     .permutation(len(entries)) if self.shuffle else np.arange(len(entries)))
            for i in range(start - base if w == first_window else 0, len(entries)):
                yield base + i, entries[int(order[i])]

    def _owed_entries(self, owed: OwedRange) -> Iterator[tuple[int, RawEntry]]:
        """The range as the stream that owed it would have read it: same shard order, same windows."""
        source = DatasetStream(self.index, self.dataset_id, owed.stream, owed.num_streams, seed=self.seed,
                               shuffle_buffer=owed.shuffle_buffer, retries=self.retries, retry_delay=self.retry_delay)
        for i, entry in source._epoch(owed.epoch, owed.lo):
            if i >= owed.hi:
                return
            yield i, entry

    def __iter__(self) -> Iterator[RawEntry]:
        """The owed ranges, then entries from the current (epoch, position); the state is advanced
        before each yield. A stream that owns no sample (more streams than samples) ends once it
        owes none, endless or not."""
        while self.owed:
            owed = self.owed[0]
            for i, entry in self._owed_entries(owed):  # exactly owed.size entries (see read_shard)
                if i + 1 < owed.hi:
                    self.owed[0] = replace(owed, lo=i + 1)
                else:
                    self.owed.pop(0)
                yield entry
        while self.length and (self.num_epochs is None or self.epoch < self.num_epochs):
            for i, entry in self._epoch(self.epoch, self.position):
                self.position = i + 1
                yield entry
            self.epoch, self.position = self.epoch + 1, 0
