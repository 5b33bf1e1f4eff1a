"""Find NaN and ±inf in a written safetensors shard without loading it whole.

Most exported tensors never pass through Python (their bytes are copied file to file with
``copy_file_range``), so the export checks the shard it has just written rather than its sources:
every tensor, read through safetensors' memory map ``CHUNK_BYTES`` at a time. This also catches
values that only became inf when converted to a narrower ``--dtype`` (1e6 in float16).

Cost: one more pass over every exported byte, normally from the page cache the write has just
filled, and one chunk plus its bool mask in memory; ``infimed-bench convert`` measures the export
with it (docs/benchmarks.md). A shard evicted from the cache is read back from disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

CHUNK_BYTES = 64 << 20


class NonFiniteWeights(ValueError):
    """An exported tensor holds NaN or ±inf."""


def _chunks(shard, name: str) -> Iterator[tuple[int, torch.Tensor]]:
    """(flat index of its first element, chunk) for whole rows of tensor ``name``, about CHUNK_BYTES
    each. Every exported tensor has rows (the mapping holds no scalars)."""
    rows = shard.get_slice(name)
    shape = rows.get_shape()
    row_elements = torch.Size(shape[1:]).numel()
    step = max(1, CHUNK_BYTES // max(1, row_elements * 4))  # 4: the widest dtype an export writes
    for start in range(0, shape[0], step):
        yield start * row_elements, rows[start:start + step]


def check_finite(path: str | Path, origins: dict[str, str]) -> None:
    """Raise ``NonFiniteWeights`` naming the first tensor of ``path`` that holds NaN or ±inf;
    ``origins`` maps a tensor name to where it came from, for the message."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as shard:
        for name in shard.keys():
            nan = inf = 0
            first = None
            for offset, chunk in _chunks(shard, name):
                finite = torch.isfinite(chunk)
                if not finite.all():
                    nan += int(torch.isnan(chunk).sum())
                    inf += int(torch.isinf(chunk).sum())
                    if first is None:
                        first = offset + int((~finite).reshape(-1).nonzero()[0])
            if first is not None:
                raise NonFiniteWeights(
                    f"exported tensor '{name}' ({origins[name]}, in {path.name}) holds {nan} NaN and {inf} inf "
                    f"value(s), the first at flat index {first}; expected finite weights (from the checkpoint, or "
                    f"from the conversion to a narrower --dtype). Pass --allow-non-finite to export them anyway")
