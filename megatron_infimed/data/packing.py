"""Online multimodal sequence packing from a bounded buffer.

| scheme                                                         | packs leave                            |
|----------------------------------------------------------------|----------------------------------------|
| greedy knapsack, flush buffer whole (``bench/packing.py``)     | all at every refill, the last ones     |
|                                                                | partly empty                           |
| open packs kept across refills (ours)                          | fullest first; the rest wait for later |
|                                                                | short samples (more state to save)     |

``infimed-bench packing`` measures both (and padding to the longest sample) on the shipped length
mix; the figures are in docs/benchmarks.md. Cost there is the planning only; assembling the pack
tensors is ``pack_builder``'s, once per pack.

The packer holds at most ``buffer_size`` samples in all, pending ones and those already placed
in open packs. When it is full, one *round* runs: the pending samples, longest first, go into
the open pack they fit best (BFD: least room left that still fits) or first (FFD: oldest open
pack that fits), opening a new pack when none fits. Then packs leave, fullest first, until
``refill`` of the buffer is free again; a pack that is exactly full or has stayed open
``max_age`` rounds leaves regardless. Partly filled packs therefore wait for later short samples
instead of leaving half empty at every refill, which is what the flush-whole baseline does.
BFD and FFD fill equally on our mixes; BFD is the default because a sorted list of free room
makes each placement O(log packs) instead of a scan.

Lengths are slots: an image counts at its expanded size (``tokens_per_image``), and any
per-sample padding for context parallelism is included by the caller.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

ALGORITHMS = ("bfd", "ffd")
DEFAULT_ALGORITHM = "bfd"

T = TypeVar("T")


@dataclass
class OpenPack(Generic[T]):
    pack_id: int
    opened_round: int
    items: list[T] = field(default_factory=list)
    used: int = 0


class OnlinePacker(Generic[T]):
    """``add(item, length)`` → list of finished packs (each a list of items); ``flush()`` at the end.

    >>> p = OnlinePacker(capacity=10, buffer_size=4)
    >>> [p.add(name, n) for name, n in [("a", 6), ("b", 3), ("c", 4)]]
    [[], [], []]
    >>> p.add("d", 4)   # buffer full: a round places a, c, d, b → {a,c} full (10) leaves
    [['a', 'c']]
    >>> p.flush()
    [['d', 'b']]
    """

    def __init__(self, capacity: int, buffer_size: int = 1024, algorithm: str = DEFAULT_ALGORITHM,
                 refill: float = 0.5, max_age: int = 8) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown packing algorithm {algorithm!r}; expected one of {ALGORITHMS}")
        if capacity <= 0 or buffer_size <= 0 or not 0 < refill <= 1:
            raise ValueError(f"packer needs capacity>0, buffer_size>0 and 0<refill<=1, got "
                             f"{capacity}, {buffer_size}, {refill}")
        self.capacity, self.buffer_size, self.algorithm = capacity, buffer_size, algorithm
        self.refill_count = max(1, int(buffer_size * refill))
        self.max_age = max_age
        self._pending: list[tuple[int, int, T]] = []  # (length, arrival, item)
        self._open: dict[int, OpenPack[T]] = {}  # insertion order = opening order (FFD scans it)
        self._room: list[tuple[int, int]] = []  # sorted (free slots, pack_id) of open packs
        self._held = 0
        self._round = 0
        self._next_id = 0
        self._arrivals = 0

    @property
    def num_held(self) -> int:
        return self._held

    def add(self, item: T, length: int) -> list[list[T]]:
        if not 0 < length <= self.capacity:
            raise ValueError(f"item of length {length} cannot be packed into capacity {self.capacity}; "
                             f"fit samples to the sequence length first")
        self._pending.append((length, self._arrivals, item))
        self._arrivals += 1
        self._held += 1
        return self._run_round(final=False) if self._held >= self.buffer_size else []

    def flush(self) -> list[list[T]]:
        """Place what is pending and return every open pack, oldest first (end of stream)."""
        return self._run_round(final=True)

    def _place(self, length: int, item: T) -> None:
        target = None
        if self.algorithm == "bfd":
            j = bisect.bisect_left(self._room, (length, -1))
            if j < len(self._room):
                target = self._open[self._room.pop(j)[1]]
        else:
            for pack in self._open.values():
                if self.capacity - pack.used >= length:
                    target = pack
                    self._room.remove((self.capacity - pack.used, pack.pack_id))
                    break
        if target is None:
            target = OpenPack(self._next_id, self._round)
            self._open[target.pack_id] = target
            self._next_id += 1
        target.items.append(item)
        target.used += length
        bisect.insort(self._room, (self.capacity - target.used, target.pack_id))

    def _run_round(self, final: bool) -> list[list[T]]:
        self._round += 1
        self._pending.sort(key=lambda entry: (-entry[0], entry[1]))  # longest first, stable by arrival
        for length, _, item in self._pending:
            self._place(length, item)
        self._pending.clear()
        if final:
            leaving = list(self._open.values())
        else:
            keep_at_most = self.buffer_size - self.refill_count
            leaving, still_held = [], self._held
            for pack in sorted(self._open.values(), key=lambda p: (-p.used, p.pack_id)):
                full = pack.used == self.capacity
                stale = self._round - pack.opened_round >= self.max_age
                if full or stale or still_held > keep_at_most:
                    leaving.append(pack)
                    still_held -= len(pack.items)
            leaving.sort(key=lambda p: p.pack_id)
        for pack in leaving:
            del self._open[pack.pack_id]
            self._room.remove((self.capacity - pack.used, pack.pack_id))
            self._held -= len(pack.items)
        return [pack.items for pack in leaving]

    def state_dict(self, encode: Callable[[T], Any]) -> dict:
        return {
            "pending": [(n, a, encode(x)) for n, a, x in self._pending],
            "open": [(p.pack_id, p.opened_round, p.used, [encode(x) for x in p.items]) for p in self._open.values()],
            "round": self._round, "next_id": self._next_id, "arrivals": self._arrivals,
            "config": (self.capacity, self.buffer_size, self.algorithm, self.refill_count, self.max_age),
        }

    def load_state_dict(self, state: dict, decode: Callable[[Any], T]) -> None:
        mine = (self.capacity, self.buffer_size, self.algorithm, self.refill_count, self.max_age)
        if tuple(state["config"]) != mine:
            raise ValueError(f"packer state was saved with (capacity, buffer_size, algorithm, refill, max_age)="
                             f"{tuple(state['config'])} but this packer has {mine}")
        self._pending = [(n, a, decode(x)) for n, a, x in state["pending"]]
        self._open = {}
        for pack_id, opened, used, items in state["open"]:
            self._open[pack_id] = OpenPack(pack_id, opened, [decode(x) for x in items], used)
        self._room = sorted((self.capacity - p.used, p.pack_id) for p in self._open.values())
        self._held = len(self._pending) + sum(len(p.items) for p in self._open.values())
        self._round, self._next_id, self._arrivals = state["round"], state["next_id"], state["arrivals"]
