"""Benchmark output: a readable table, then (``--json``) one JSON object as the LAST stdout line.

Every JSON object carries ``benchmark``, the issue's fields, ``repeats`` and ``environment``
(python, torch, megatron-core, device, CPU count), so a figure is never read without its context.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone


@dataclass
class BenchResult:
    name: str
    fields: dict  # the JSON payload (issue fields first)
    header: tuple[str, ...]
    rows: list[tuple] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # printed under the table: what was compared

    def to_json(self) -> dict:
        return {"benchmark": self.name, **self.fields, "environment": environment()}


def environment() -> dict:
    import torch

    try:
        from importlib.metadata import version

        mcore = version("megatron-core")
    except Exception:  # not installed: the figure still says so
        mcore = None
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        device = f"cpu ({platform.processor() or platform.machine()})"
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "python": platform.python_version(),
            "torch": torch.__version__, "megatron_core": mcore, "device": device,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def format_table(header: tuple[str, ...], rows: list[tuple]) -> str:
    cells = [list(header)] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def emit(result: BenchResult, as_json: bool, stream=None) -> None:
    stream = stream or sys.stdout
    print(f"== {result.name} ==", file=stream)
    print(format_table(result.header, result.rows), file=stream)
    for note in result.notes:
        print(f"  note: {note}", file=stream)
    if as_json:
        print(json.dumps(result.to_json(), sort_keys=False), file=stream)
    stream.flush()
