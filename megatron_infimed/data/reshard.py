"""Resuming the training loader at another data-parallel size or worker count, exactly once.

Why not restart the streams: a checkpoint taken mid-epoch has trained part of the epoch, holds
part of it in the packers, and owes the rest. Restarting at the epoch's start (``--reset-data-state``)
trains the first part twice; starting at the next epoch loses the rest. Why not map old streams
onto new ones: the split (``streaming``: stream ``s`` of ``N`` reads ``[s*T//N, (s+1)*T//N)`` of
each epoch's order) changes with ``N``, so no new stream's epoch is any old stream's remainder.

What a saved state says, and why that is enough: each saved stream (a rank's worker, per dataset)
is at ``(epoch, position)`` of a sequence that is a pure function of (seed, dataset, epoch, stream,
stream count, shuffle window) and the manifest. Its unread rest of the epoch is therefore a range
of positions that any process can read back (``streaming.OwedRange``). Every sample of an epoch
is, at the checkpoint, exactly one of: trained, held by a rank (packer, ready packs, carried), or
owed by the stream that would read it. So the new layout:

* starts its own split at ``E*``, the first epoch no live saved stream had begun (streams drift by
  up to an epoch: a stream that had begun ``E*-1`` makes every stream still in ``E*-2`` owe the
  whole of ``E*-1`` too). Nothing of an epoch before ``E*`` is read by the new split, nothing of
  ``E*`` had been read by the old one;
* lays each dataset's owed ranges end to end, in epoch order, and gives new stream ``j`` of ``M``
  the slice ``[j*R//M, (j+1)*R//M)`` of those ``R`` positions (the epoch split's own rule, so the
  new streams finish their debt together, within a sample); a stream reads its debt before its
  first epoch;
* deals the held samples by saved rank, in contiguous blocks: saved rank ``r`` of ``A`` is the
  interval ``[r, r+1)`` of ``[0, A)``, its ``n`` held samples cut into ``n`` equal parts of it, and new
  rank ``j`` of ``B`` takes those in ``[j*A/B, (j+1)*A/B)`` (``held_slice``). Each new rank so needs
  only the held samples of the saved ranks its interval meets (at most ``ceil(A/B) + 1``, and its
  own at an unchanged size), the new ranks read at most ``A + B - 1`` of them in all, and with equal
  held counts each gets its share within one sample. They enter each rank's packer before any stream sample
  (``TrainLoader``'s carry), as re-decoded raw bytes like the packer's own state.

The assignment is a pure function of all saved states and (new rank, new data-parallel size, new
workers): the new ranks agree without communicating. Blend counts are summed per dataset and
split the same way; the error and sample counters of saved rank ``i`` go to new rank ``i % size``.

Limits: the set of every epoch is exact, not the order (each new stream has its own windows, and
the packers reorder within their buffer). A stream that had stopped (its whole epoch unusable, or
its ``num_epochs`` done) owes nothing. Seed and datasets must be unchanged; the shuffle window may
change (owed ranges keep their own). States saved before version 2 do not record their shuffle
window and are refused here. Each new rank reads every saved rank's stream state (small), one at a
time; the held samples (large: raw shard bytes) can be saved apart (``split_held``) and are then read
only where dealt (``reshard_loader_states``' ``held``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import astuple, dataclass, replace

from megatron_infimed.data.streaming import OwedRange, stream_range

RESHARDABLE_VERSION = 2  # the first loader state version that records its shuffle window
HELD_KEYS = ("packer", "ready", "carry")  # what a state holds of samples read but not trained


@dataclass(frozen=True)
class SavedStream:
    """One saved stream of one dataset, as the reshard needs it."""

    stream: int
    num_streams: int
    shuffle_buffer: int
    length: int  # samples of each epoch this stream reads
    epoch: int
    position: int
    owed: tuple[OwedRange, ...]
    live: bool  # still reading (not stopped, not done with its epochs)
    count: int  # blend draws from this dataset

    def next_read(self) -> tuple[int, int]:
        """``(epoch, position)`` of the stream's next sample: after an epoch's last sample the saved
        state is ``(epoch, length)``, which is the start of the next one."""
        if self.length and self.position >= self.length:
            return self.epoch + 1, 0
        return self.epoch, self.position

    @property
    def begun(self) -> int:
        """The first epoch this stream has not begun."""
        epoch, position = self.next_read()
        return epoch + int(position > 0)

    def debt(self, first_new_epoch: int) -> list[OwedRange]:
        """What it still owes of the epochs before ``first_new_epoch``: its rest of the current one and
        every later one it had not begun."""
        ranges = list(self.owed)
        if not self.live or not self.length:
            return ranges
        epoch, position = self.next_read()
        for e in range(epoch, first_new_epoch):
            start = position if e == epoch else 0
            ranges.append(OwedRange(e, self.stream, self.num_streams, self.shuffle_buffer, start, self.length))
        return ranges


def split_held(state: dict) -> tuple[dict, dict | None]:
    """A loader state as two parts to save apart: its stream state (positions, owed ranges, counters,
    identity: small) with the number of samples it holds (``held_samples``), and those samples (its
    ``packer``, ``ready`` packs and ``carry``: raw shard bytes, large) with its ``dp_rank``.
    ``(state, None)`` for a state without held samples (mock data) or one already split."""
    if "packer" not in state:
        return state, None
    small = {k: v for k, v in state.items() if k not in HELD_KEYS}
    small["held_samples"] = len(_held(state))
    return small, {"dp_rank": state["dp_rank"], **{k: state[k] for k in HELD_KEYS if k in state}}


def join_held(state: dict, held: dict) -> dict:
    """The whole state again from ``split_held``'s two parts (a whole ``state`` is returned as is)."""
    if "held_samples" not in state:
        return state
    if held.get("dp_rank") != state["dp_rank"] or len(_held(held)) != state["held_samples"]:
        raise ValueError(f"the held samples of data-parallel rank {held.get('dp_rank')} ({len(_held(held))}) are "
                         f"not those the stream state of rank {state['dp_rank']} counts ({state['held_samples']}); "
                         f"the loader files are not of one checkpoint")
    whole = {k: v for k, v in state.items() if k != "held_samples"}
    whole.update((k, held[k]) for k in HELD_KEYS if k in held)
    return whole


def held_count(state: dict) -> int:
    """The samples a saved state holds, whole or split."""
    return state["held_samples"] if "held_samples" in state else len(_held(state))


def held_slice(rank: int, count: int, size: int, new_rank: int, new_size: int) -> tuple[int, int]:
    """The held samples ``[lo, hi)`` of saved rank ``rank`` of ``size`` (it holds ``count``) that go to
    new rank ``new_rank`` of ``new_size``: sample ``i`` sits at ``rank + i/count`` of ``[0, size)``, new
    rank ``j`` takes ``[j*size/new_size, (j+1)*size/new_size)``. The slices of the new ranks partition
    each saved rank's samples; at an unchanged size each new rank takes exactly its own."""
    def at(j: int) -> int:  # the first sample at or past j*size/new_size, counted from this rank's first
        return -(-j * size * count // new_size) - rank * count

    lo, hi = max(at(new_rank), 0), min(at(new_rank + 1), count)
    return (lo, hi) if lo < hi else (0, 0)


class _Saved:
    """What the reshard keeps of the saved states, read one at a time (a state holds raw samples)."""

    def __init__(self, dp_rank: int, dp_size: int) -> None:
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.identity: dict | None = None
        self.shuffle_buffer = 0
        self.ranks = 0
        self.streams: list[list[SavedStream]] = []  # per dataset, in (rank, worker) order
        self.carry: list[dict] = []
        self.counters: Counter = Counter()
        self.errors: Counter = Counter()
        self.dropped: Counter = Counter()

    def add(self, state: dict, read_held: Callable[[int], dict] | None) -> None:
        self._check(state)
        rank, workers, size = state["dp_rank"], state["num_workers"], state["dp_size"]
        totals = [total for _, total in state["datasets"]]
        num_streams = size * workers
        for worker, worker_state in enumerate(state["worker_states"]):
            stream = rank * workers + worker
            for d, total in enumerate(totals):
                self.streams[d].append(_saved_stream(worker_state, d, stream, num_streams, total,
                                                     state["shuffle_buffer"]))
        lo, hi = held_slice(rank, held_count(state), size, self.dp_rank, self.dp_size)
        if lo < hi:  # only then are a split state's held samples read
            if "held_samples" in state:
                if read_held is None:
                    raise ValueError(f"saved data-parallel rank {rank}'s held samples are saved apart "
                                     f"(split_held): pass held= to read them")
                state = join_held(state, read_held(rank))
            self.carry.extend(_held(state)[lo:hi])
        if rank % self.dp_size == self.dp_rank:
            self.counters.update(state["counters"])
            self.errors.update(state["errors"])
            self.dropped.update(state["dropped"])
        self.ranks += 1

    def _check(self, state: dict) -> None:
        version = state.get("version", 1)
        where = f"saved data-parallel rank {state.get('dp_rank')}"
        if state.get("kind") == "mock":
            raise ValueError(f"{where}: a --mock-data state has no streams to reshard")
        if version < RESHARDABLE_VERSION:
            raise ValueError(f"{where}: loader state version {version} does not record its shuffle window, so it "
                             f"cannot be resharded; resume at its data-parallel size ({state.get('dp_size')}) and "
                             f"worker count ({state.get('num_workers')}), or pass --reset-data-state")
        identity = {k: state[k] for k in ("dp_size", "num_workers", "seed")}
        identity["datasets"] = [list(d) for d in state["datasets"]]
        if self.identity is None:
            self.identity, self.shuffle_buffer = identity, state["shuffle_buffer"]
            self.streams = [[] for _ in identity["datasets"]]
        elif identity != self.identity:
            diff = {k: (self.identity[k], identity[k]) for k in identity if identity[k] != self.identity[k]}
            raise ValueError(f"{where}: its state disagrees with rank 0's ({diff}); the states are not of one run")
        if state["dp_rank"] != self.ranks:
            raise ValueError(f"{where}: expected the state of rank {self.ranks} (the states go in rank order)")

    def finish(self) -> None:
        if self.identity is None:
            raise ValueError("no saved loader state to reshard")
        if self.ranks != self.identity["dp_size"]:
            raise ValueError(f"got {self.ranks} saved loader states of a data-parallel size of "
                             f"{self.identity['dp_size']}: every saved rank's state is needed")


def _saved_stream(worker_state: dict | None, d: int, stream: int, num_streams: int, total: int,
                  shuffle_buffer: int) -> SavedStream:
    lo, hi = stream_range(total, stream, num_streams)
    if worker_state is None:  # the worker had produced nothing: at the start of epoch 0
        return SavedStream(stream, num_streams, shuffle_buffer, hi - lo, 0, 0, (), True, 0)
    epoch, position = worker_state["datasets"][d]
    owed = worker_state.get("owed") or [()] * len(worker_state["datasets"])
    return SavedStream(stream, num_streams, shuffle_buffer, hi - lo, int(epoch), int(position),
                       tuple(OwedRange(*map(int, r)).check(total) for r in owed[d]),
                       not worker_state["done"][d], int(worker_state["counts"][d]))


def _held(state: dict) -> list[dict]:
    """The samples a saved rank had read but not yet trained: carried, in ready packs, in the packer
    (open packs, then pending), as encoded samples (``{"id", "raw"}``)."""
    packer = state["packer"] or {"open": [], "pending": []}  # None: resharded, never loaded
    return [*state.get("carry", ()), *(s for pack in state["ready"] for s in pack),
            *(s for *_, items in packer["open"] for s in items), *(s for *_, s in packer["pending"])]


def first_new_epoch(streams: list[SavedStream]) -> int:
    """``E*`` of one dataset: the first epoch no live saved stream had begun."""
    live = [s.begun for s in streams if s.live]
    return max(live) if live else max(s.begun for s in streams)


def split_debt(ranges: list[OwedRange], part: int, parts: int) -> list[OwedRange]:
    """Slice ``part`` of ``parts`` of the ranges laid end to end (the epoch split's ``stream_range``)."""
    lo, hi = stream_range(sum(r.size for r in ranges), part, parts)
    out, at = [], 0
    for r in ranges:
        start, stop = max(lo - at, 0), min(hi - at, r.size)
        if start < stop:
            out.append(replace(r, lo=r.lo + start, hi=r.lo + stop))
        at += r.size
    return out


def reshard_loader_states(states: Iterable[dict], dp_rank: int, dp_size: int, num_workers: int,
                          held: Callable[[int], dict] | None = None) -> dict:
    """The loader state of rank ``dp_rank`` of ``dp_size`` (``num_workers`` each) that continues the run
    whose every rank saved one of ``states`` (in rank order; read one at a time, so a generator of
    ``torch.load`` keeps one in memory). A state may be whole or split (``split_held``); ``held(rank)``
    returns a split one's held samples and is called only for the saved ranks whose held samples are
    dealt to ``dp_rank`` (``held_slice``), once each. Load the result with ``TrainLoader.load_state_dict``."""
    if not 0 <= dp_rank < dp_size or num_workers < 1:
        raise ValueError(f"cannot reshard onto rank {dp_rank} of {dp_size} with {num_workers} workers")
    saved = _Saved(dp_rank, dp_size)
    for state in states:
        saved.add(state, held)
    saved.finish()
    num_streams = dp_size * num_workers
    starts = [{"datasets": [], "counts": [], "done": [], "owed": []} for _ in range(num_workers)]
    for streams in saved.streams:
        epoch = first_new_epoch(streams)
        debt = sorted((r for s in streams for r in s.debt(epoch)), key=lambda r: r.epoch)  # stable
        draws = sum(s.count for s in streams)
        for worker, start in enumerate(starts):
            stream = dp_rank * num_workers + worker
            lo, hi = stream_range(draws, stream, num_streams)
            start["datasets"].append((epoch, 0))
            start["counts"].append(hi - lo)
            start["done"].append(False)
            start["owed"].append([astuple(r) for r in split_debt(debt, stream, num_streams)])
    identity = saved.identity
    return {
        "version": RESHARDABLE_VERSION, "dp_rank": dp_rank, "dp_size": dp_size, "num_workers": num_workers,
        "seed": identity["seed"], "datasets": identity["datasets"],
        "shuffle_buffer": saved.shuffle_buffer,  # moot: every position is at an epoch's start
        "worker_states": starts, "ended": [False] * num_workers, "barren": [None] * num_workers, "cursor": 0,
        "finished": False, "packer": None, "ready": [], "carry": saved.carry,
        "counters": dict(saved.counters), "errors": dict(saved.errors), "dropped": dict(saved.dropped),
    }
