"""Per-iteration training metrics: the console line, ``RUN_DIR/metrics.jsonl``, the sample ledger
``RUN_DIR/samples-dpR.jsonl`` and W&B.

A resumed run redoes the iterations after its checkpoint; both files are first cut back to the
resumed iteration (``truncate_jsonl``), so each iteration has exactly one line.

Throughput counts real tokens only (padding excluded). TFLOP/s per GPU uses the one FLOPs
formula in ``training.flops``; MFU divides it by the device's dense bf16 peak (known H100/H200
figures, or ``INFIMED_PEAK_TFLOPS``); on a CPU there is no peak and MFU is reported as null.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

# Dense bf16 peaks without sparsity (NVIDIA datasheets).
_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def peak_tflops() -> float | None:
    if "INFIMED_PEAK_TFLOPS" in os.environ:
        return float(os.environ["INFIMED_PEAK_TFLOPS"])
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in _PEAK_TFLOPS.items() if key in name), None)


def truncate_jsonl(path: Path, iteration: int) -> int:
    """Keep the records of ``path`` up to ``iteration`` (a line cut short by a kill goes too);
    returns how many were removed. Rewritten atomically."""
    if not path.is_file():
        return 0
    kept, removed = [], 0
    for line in path.read_text().splitlines():
        try:
            keep = json.loads(line)["iteration"] <= iteration
        except (json.JSONDecodeError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line + "\n")
        else:
            removed += 1
    if removed:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
    return removed


class MetricsLogger:
    """Writes one JSON object per logged iteration; only the rank that owns the loss writes."""

    def __init__(self, run_dir: str | None, enabled: bool, wandb_project: str | None = None,
                 wandb_mode: str = "offline", config: dict | None = None):
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl" if run_dir and enabled else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.wandb = None
        if enabled and wandb_project:
            import wandb  # optional extra: pip install 'megatron-infimed[wandb]'

            # The API key comes from the environment or ~/.netrc; it is never logged or stored here.
            self.wandb = wandb.init(project=wandb_project, mode=wandb_mode, dir=run_dir,
                                    config={k: v for k, v in (config or {}).items() if "key" not in k.lower()})

    def start_at(self, iteration: int) -> None:
        """Drop records after ``iteration``: a resumed run logs those iterations again."""
        if self.path:
            truncate_jsonl(self.path, iteration)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        parts = [f"iter {record['iteration']:>6}", f"loss {record['loss']:.6f}",
                 f"grad_norm {record['grad_norm']:.4f}", f"lr {record['lr']:.3e}",
                 f"tokens/s {record['tokens_per_s']:.0f}", f"fill {record['fill_ratio']:.3f}"]
        if record.get("tflops_per_gpu") is not None:
            parts.append(f"TFLOP/s/GPU {record['tflops_per_gpu']:.2f}")
        if record.get("mfu") is not None:
            parts.append(f"MFU {100 * record['mfu']:.1f}%")
        parts.append(f"data_wait {record['data_wait_s']:.3f}s")
        if record.get("skipped_samples"):
            parts.append(f"skipped {record['skipped_samples']}")
        print(" | ".join(parts), flush=True)
        if self.path:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(record, step=record["iteration"])

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


class SampleLedger:
    """``RUN_DIR/samples-dpR.jsonl``: which samples each data-parallel rank trained at each iteration."""

    def __init__(self, run_dir: str | None, enabled: bool):
        self.enabled = bool(run_dir) and enabled
        self.run_dir = Path(run_dir) if run_dir else None

    def start_at(self, iteration: int, dp_rank: int) -> None:
        if self.enabled:
            truncate_jsonl(self.run_dir / f"samples-dp{dp_rank}.jsonl", iteration)

    def write(self, iteration: int, dp_rank: int, packs) -> None:
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.run_dir / f"samples-dp{dp_rank}.jsonl").open("a") as f:
            f.write(json.dumps({"iteration": iteration, "sample_ids": [s for p in packs for s in p.sample_ids]})
                    + "\n")
