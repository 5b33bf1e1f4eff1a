"""Hand the same micro-batches to every model chunk of a rank.

With virtual pipelining a rank holds several chunks and megatron-core's schedule asks each for
``num_microbatches`` micro-batches, interleaved. Every chunk must see the same sequence, read once:

    source: p0 p1 p2 ...        chunk 0 cursor → p2
                                chunk 1 cursor → p1      buffer keeps p1, p2 until both passed
"""

from __future__ import annotations

import time
from collections import deque
from typing import Iterator


class SharedMicrobatches:
    def __init__(self, source: Iterator, num_chunks: int):
        self.source, self.num_chunks = source, num_chunks
        self.buffer: deque = deque()
        self.first_index = 0  # index of buffer[0] in the stream
        self.cursors = [0] * num_chunks
        self.wait_seconds = 0.0  # time spent waiting for the source (data-wait metric)

    def iterators(self) -> list[Iterator]:
        return [self._chunk_iterator(i) for i in range(self.num_chunks)]

    def _chunk_iterator(self, chunk: int):
        while True:
            yield self._take(chunk)

    def _take(self, chunk: int):
        index = self.cursors[chunk]
        while index - self.first_index >= len(self.buffer):
            start = time.perf_counter()
            self.buffer.append(next(self.source))
            self.wait_seconds += time.perf_counter() - start
        item = self.buffer[index - self.first_index]
        self.cursors[chunk] += 1
        while self.buffer and min(self.cursors) > self.first_index:
            self.buffer.popleft()
            self.first_index += 1
        return item

    def take_wait_seconds(self) -> float:
        seconds, self.wait_seconds = self.wait_seconds, 0.0
        return seconds
