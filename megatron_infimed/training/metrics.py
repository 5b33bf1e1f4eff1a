"""Per-iteration training metrics: the console line, ``RUN_DIR/metrics.jsonl``, the sample ledger
``RUN_DIR/samples-dpR.jsonl`` and W&B.

A resumed run redoes the iterations after its checkpoint; both files are first cut back to the
resumed iteration (``truncate_jsonl``), so each iteration has exactly one line.

Throughput counts real tokens only (padding excluded). TFLOP/s per GPU is the useful model work
of the step by the one FLOPs formula (``training.flops.pack_training_flops``: frozen parts at
their real cost, padding left out); MFU divides it by one GPU's dense bf16 peak, ``--peak-tflops``
or NVIDIA's figure for the device (``device_peak_tflops``). On a CPU, or a GPU missing from the
table without ``--peak-tflops``, MFU is reported as null.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch
from megatron.core import parallel_state

from megatron_infimed.config.run import LoggingSection
from megatron_infimed.runtime import distributed
from megatron_infimed.training.flops import frozen_parts, pack_training_flops

# Dense bf16 tensor-core peaks of one GPU in TFLOP/s, without sparsity (NVIDIA datasheets: half the
# "with sparsity" figure), as (model, variant, peak). ``torch.cuda.get_device_name()`` is split into
# words, so "H20" never reads as "H200"; where one model ships at different clocks the variant's
# word picks the row, and a model's row without a variant (the SXM part) comes after its variants.
_PEAK_TFLOPS = (
    ("H100", "PCIE", 756.0),    # "NVIDIA H100 PCIe"
    ("H100", "NVL", 835.0),     # "NVIDIA H100 NVL" (1,671 with sparsity)
    ("H100", None, 989.0),      # SXM5: "NVIDIA H100 80GB HBM3"
    ("H200", "NVL", 835.0),     # "NVIDIA H200 NVL" (1,671 with sparsity)
    ("H200", None, 989.0),      # SXM: "NVIDIA H200"
    ("GH200", None, 989.0),     # "NVIDIA GH200 480GB": the H100 SXM's Hopper GPU
    ("A100", None, 312.0),      # SXM4 and PCIe alike: "NVIDIA A100-SXM4-80GB", "NVIDIA A100 80GB PCIe"
    ("B200", None, 2250.0),     # "NVIDIA B200"
)


def device_peak_tflops(device_name: str) -> float | None:
    """NVIDIA's dense bf16 peak for a device name, or None when the table does not list it.

    ``"NVIDIA H100 80GB HBM3"`` → 989.0 (SXM), ``"NVIDIA H100 PCIe"`` → 756.0, ``"NVIDIA L40S"`` → None.
    """
    words = set(re.findall(r"[A-Z0-9]+", device_name.upper()))
    return next((peak for model, variant, peak in _PEAK_TFLOPS
                 if model in words and (variant is None or variant in words)), None)


def peak_tflops(override: float | None) -> float | None:
    """The peak MFU divides by: ``override`` (``--peak-tflops``) when set, else this GPU's figure
    from the table; None on a CPU or an unlisted GPU."""
    if override is not None:
        return override
    if not torch.cuda.is_available():
        return None
    return device_peak_tflops(torch.cuda.get_device_name())


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

    def __init__(self, logging: LoggingSection, enabled: bool, config: dict | None = None):
        self.enabled = enabled
        run_dir = logging.run_dir
        self.path = Path(run_dir) / "metrics.jsonl" if run_dir and enabled else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.wandb = None
        if enabled and logging.wandb_project:
            import wandb  # optional extra: pip install 'megatron-infimed[wandb]'

            # The API key comes from the environment or ~/.netrc; it is never logged or stored here.
            self.wandb = wandb.init(project=logging.wandb_project, mode=logging.wandb_mode, dir=run_dir,
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


def step_record(run, result, peak: float | None) -> dict:
    """The metrics of the step ``result`` of ``run``: loss and token counts summed over
    data- and context-parallel ranks (meaningful on the last pipeline stage, which logs them)."""
    packs, seconds = result.packs, result.seconds
    real = sum(p.num_real_tokens for p in packs)
    slots = sum(p.num_tokens for p in packs)
    frozen = frozen_parts(run.config.model)
    flops = sum(pack_training_flops(run.model_config, p, frozen) for p in packs)
    stats = run.feed.stats()
    # Every context-parallel rank holds the whole packs but only its chunks' loss: the pack counts
    # come from CP rank 0, the loss sums from every CP rank.
    pack_share = 1.0 if parallel_state.get_context_parallel_rank() == 0 else 0.0
    totals = torch.tensor([result.loss_sum, result.weight_sum, real * pack_share, slots * pack_share,
                           flops * pack_share, stats.get("skipped", 0) * pack_share],
                          dtype=torch.float64, device=distributed.device())
    torch.distributed.all_reduce(totals, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
    loss_sum, weight_sum, real, slots, flops, skipped = totals.tolist()
    tflops_per_gpu = flops / seconds / torch.distributed.get_world_size() / 1e12
    # The loader's cumulative counters (truncations, bad inputs, ...) of this data-parallel rank.
    loader_counters = {k: v for k, v in stats.items() if k.startswith("data/")}
    return {
        "iteration": run.iteration, "consumed_samples": run.consumed_samples,
        "loss": loss_sum / weight_sum if weight_sum else float("nan"),
        "grad_norm": float(result.grad_norm) if result.grad_norm is not None else float("nan"),
        "lr": result.lr, "tokens": int(real),
        "tokens_per_s": real / seconds, "fill_ratio": real / slots if slots else 0.0,
        "samples_per_micro_batch": sum(len(p.sample_ids) for p in packs) / len(packs) if packs else 0.0,
        "tflops_per_gpu": tflops_per_gpu, "mfu": tflops_per_gpu / peak if peak else None,
        "step_time_s": seconds, "data_wait_s": result.data_wait_seconds, "skipped_samples": int(skipped),
        **loader_counters,
    }


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
