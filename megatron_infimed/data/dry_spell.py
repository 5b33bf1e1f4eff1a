"""When a stream gives up: what it read since its last usable sample, and whether that spans a
whole epoch of every dataset it blends.

Past that point waiting cannot help: the next epoch holds the same samples, read from the same
shards by the same preprocessing. The stream stops and says why (``DrySpell.describe``); the
loader raises ``NoUsableSamples`` once none of its streams is left producing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from megatron_infimed.data.streaming import DatasetStream, ErrorRecord


class NoUsableSamples(RuntimeError):
    """No stream of a data-parallel rank can produce a sample; the message says why, stream by stream."""


def _epochs_read(stream: DatasetStream) -> int:
    """Whole epochs behind the stream (its state is (epoch, position) after the last read)."""
    epoch, position = stream.state()
    return epoch + int(position >= stream.length)


class DrySpell:
    """One worker's reads since its last usable sample (or its start), counted by reason."""

    def __init__(self, streams: Sequence[DatasetStream], weights: Sequence[float]) -> None:
        self.streams, self.weights = streams, weights
        self.reset()

    def reset(self) -> None:
        # The first epoch of each dataset that the spell can read whole: one already begun is not.
        self.first_epochs = [epoch + int(position > 0) for epoch, position in (s.state() for s in self.streams)]
        self.read = 0
        self.dropped: Counter[str] = Counter()
        self.bad: Counter[str] = Counter()
        self.examples: dict[str, ErrorRecord] = {}

    def add(self, record: ErrorRecord, dropped: bool) -> None:
        self.read += 1
        (self.dropped if dropped else self.bad)[record.reason] += 1
        self.examples.setdefault(record.reason, record)

    def _blended(self) -> list[tuple[DatasetStream, int]]:
        """The datasets that can give this worker samples, with their first whole epoch."""
        return [(s, first) for s, w, first in zip(self.streams, self.weights, self.first_epochs)
                if w > 0 and s.length > 0]

    def spans_an_epoch(self) -> bool:
        return all(_epochs_read(s) > first for s, first in self._blended())

    def describe(self, stream: str, max_length: int) -> str:
        """``stream``: who is speaking, e.g. "stream 1 of 2 (dp rank 0, worker 1)"."""
        if not self._blended():
            owned = ", ".join(f"{s.index.root}: {s.index.total} samples" for s in self.streams)
            return f"{stream}: owns no sample ({owned}, split over {self.streams[0].num_streams} streams)"
        epochs = ", ".join(f"epoch {first} of {s.index.root}" for s, first in self._blended())
        parts = []
        for counts, what in ((self.dropped, f"longer than the {max_length}-token pack capacity"),
                             (self.bad, "bad input")):
            if counts:
                reasons = ", ".join(f"{reason} {n} (e.g. {self.examples[reason].key} in "
                                    f"{self.examples[reason].shard}: {self.examples[reason].message})"
                                    for reason, n in counts.most_common())
                parts.append(f"{sum(counts.values())} {what}: {reasons}")
        return f"{stream}: no usable sample in a whole epoch ({epochs}); {self.read} read: {'; '.join(parts)}"
