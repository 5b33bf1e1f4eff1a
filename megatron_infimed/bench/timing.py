"""Timing for side-by-side benchmarks: both sides in one process, alternating, medians.

| choice                      | why                                                              |
|-----------------------------|------------------------------------------------------------------|
| alternate A B, B A, A B ... | drift (thermal, a neighbour on the shared cores) hits both sides  |
| warm-up round, not timed    | first calls pay allocation, lazy imports and kernel selection     |
| median of the repetitions   | one stalled repetition does not move the figure                  |

A side is a callable that does the work once; it may return its own elapsed seconds as a float
(when its setup must not count); any other return value is ignored and the call is timed whole.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_once(fn: Callable[[], float | None]) -> float:
    synchronize()
    start = time.perf_counter()
    own = fn()
    synchronize()
    elapsed = time.perf_counter() - start
    return own if isinstance(own, float) else elapsed


def alternate(sides: dict[str, Callable[[], float | None]], repeats: int = 3,
              warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each repetition per side; even repetitions run in order, odd ones reversed.

    >>> t = alternate({"a": lambda: 0.5, "b": lambda: 0.25}, repeats=3, warmup=0)
    >>> t == {"a": [0.5, 0.5, 0.5], "b": [0.25, 0.25, 0.25]}
    True
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            seconds[name].append(time_once(sides[name]))
    return seconds


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def in_workdir(workdir: str | None, prefix: str, measure: Callable[[Path], object]):
    """``measure(folder)`` in ``workdir``, or in a temporary folder that is removed afterwards."""
    work = Path(workdir or tempfile.mkdtemp(prefix=prefix))
    try:
        return measure(work)
    finally:
        if workdir is None:
            shutil.rmtree(work, ignore_errors=True)
