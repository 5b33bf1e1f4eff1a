"""Bootstrap 95% confidence intervals for the metrics of results.json.

| choice                | here                                       | alternative                         |
|-----------------------|--------------------------------------------|-------------------------------------|
| what is resampled     | the questions a metric averages over       | all questions, every metric at once |
| interval              | percentile (2.5th and 97.5th of the means)  | normal approximation, BCa           |

Each metric resamples its own questions (``closed_accuracy`` the closed ones, a category its
members), ``n`` with replacement, ``resamples`` times, so no resample is empty. Each call seeds a
fresh generator with ``seed``: an interval depends on its values, ``resamples`` and ``seed`` only,
not on which other metrics were computed before it.

Example: 30 right of 40 (0.75) with 1000 resamples gives about [0.62, 0.88]; 300 of 400 about
[0.71, 0.79]. A metric whose values are all equal gets the interval [value, value].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
_PERCENTILES = (100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2)
_MAX_GATHERED = 1 << 23  # values gathered per chunk of resamples (64 MiB of float64)


def bootstrap_intervals(values: Sequence[Sequence[float]], resamples: int, seed: int) -> list[tuple[float, float]]:
    """Percentile intervals of the means of each row of ``values`` (rows: metrics over the same
    questions, resampled together); one ``(low, high)`` per row.

    >>> bootstrap_intervals([[1.0, 1.0, 1.0]], resamples=100, seed=0)
    [(1.0, 1.0)]
    """
    table = np.asarray(values, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] == 0:
        raise ValueError(f"bootstrap needs rows of at least one value each, got shape {table.shape}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    n = table.shape[1]
    rng = np.random.default_rng(seed)
    means = np.empty((resamples, table.shape[0]))
    chunk = max(1, _MAX_GATHERED // n)
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        picks = rng.integers(0, n, size=(stop - start, n), dtype=np.int32 if n < 2**31 else np.int64)
        for row, metric in enumerate(table):
            means[start:stop, row] = metric[picks].mean(axis=1)
    low, high = np.percentile(means, _PERCENTILES, axis=0)
    return [(float(lo), float(hi)) for lo, hi in zip(low, high)]
