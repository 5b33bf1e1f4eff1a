"""``infimed-bench convert``: ``export_hf`` of a torch_dist checkpoint of ``--gb`` GB (default 1) vs
copying the same bytes as safetensors (``load_file`` + ``save_file`` of the exported shards).

Each timed operation runs in its own child process, which reports its own seconds and peak RSS
(``VmHWM``: the high-water mark of its own address space), so the parent's memory never counts
and imports are not timed. The checkpoint is a random-weight InfiMedModel in fp32 whose decoder depth is chosen to
reach the size, written once with ``training.checkpoint.save_weights``. Target: ``ratio`` ≥ 0.5 and
peak RSS ≤ 1.5 × the largest output shard + a fixed overhead under 1 GB (the child's imports
are part of that overhead: ``baseline_rss_gb``).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from megatron_infimed.bench.report import BenchResult
from megatron_infimed.bench.timing import alternate, in_workdir, median

GB = 1e9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gb", type=float, default=1.0, help="checkpoint size to build (fp32 GB)")
    parser.add_argument("--max-shard-size", default="500MB", help="export shard size (export_hf's option)")
    parser.add_argument("--workdir", default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--hidden-size", type=int, default=1024, help="decoder width of the built model")
    parser.add_argument("--repeats", type=int, default=5)


def config_for_size(gb: float, hidden: int = 1024):
    """A ``hidden``-wide decoder (32k vocabulary) with as many layers as reach ``gb`` GB of fp32 weights."""
    from megatron_infimed.bench.workload import small_model_config

    # One layer: QKV + output projection (heads × 64 = hidden, half as many K/V heads) + SwiGLU at 3×hidden.
    per_layer = 3 * hidden * hidden + 9 * hidden * hidden
    embedding = 32_000 * hidden
    layers = max(1, math.ceil((gb * GB / 4 - embedding) / per_layer))
    return small_model_config(hidden=hidden, layers=layers, vocab=32_000)


def build_checkpoint(root: Path, gb: float, hidden: int) -> float:
    """Write the checkpoint; returns its weight bytes in GB."""
    from megatron_infimed.bench.workload import build_model
    from megatron_infimed.checkpoint.dist import save_weights

    model = build_model(config_for_size(gb, hidden))
    size = sum(p.numel() * p.element_size() for p in model.parameters()) / GB
    save_weights(str(root), [model])
    return size


def _peak_rss_gb() -> float:
    """This process's RSS high-water mark. ``VmHWM`` belongs to the address space, so unlike
    ``getrusage``'s ``ru_maxrss`` (kept across fork and exec) it does not report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GB  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # no /proc: KiB on Linux


def child(mode: str, source: str, target: str, max_shard_size: str) -> None:
    """Runs in the child: one export or one copy, then a JSON line with seconds and peak RSS."""
    import psutil
    from safetensors.torch import load_file, save_file

    from megatron_infimed.convert.export_hf import export_hf

    # Imports are done before timing; what they hold now is the fixed overhead.
    baseline = psutil.Process().memory_info().rss / GB
    start = time.perf_counter()
    if mode == "export":
        export_hf(source, target, max_shard_size=max_shard_size, progress=False)
    elif mode == "copy":
        Path(target).mkdir(parents=True)
        for shard in sorted(Path(source).glob("*.safetensors")):
            save_file(load_file(str(shard)), str(Path(target) / shard.name), metadata={"format": "pt"})
            # Drop the shard before the next, as a streaming copy would.
    else:
        raise ValueError(f"unknown child mode {mode!r}; expected 'export' or 'copy'")
    print(json.dumps({"seconds": time.perf_counter() - start, "peak_rss_gb": _peak_rss_gb(),
                      "baseline_rss_gb": baseline}))


def _run_child(mode: str, source: Path, target: Path, max_shard_size: str) -> dict:
    shutil.rmtree(target, ignore_errors=True)
    done = subprocess.run([sys.executable, "-m", "megatron_infimed.bench.convert", mode, str(source), str(target),
                           max_shard_size], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"convert benchmark child '{mode}' failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(args: argparse.Namespace) -> BenchResult:
    return in_workdir(args.workdir, "infimed-bench-convert-", lambda work: _measure(args, work))


def _measure(args: argparse.Namespace, work: Path) -> BenchResult:
    checkpoint = work / "checkpoint"
    model_gb = build_checkpoint(checkpoint, args.gb, args.hidden_size)
    reference = work / "reference"
    _run_child("export", checkpoint, reference, args.max_shard_size)  # warm-up; the copy reads these shards
    reports: dict[str, list[dict]] = {"export": [], "copy": []}

    def side(mode: str, source: Path):
        def once() -> float:
            report = _run_child(mode, source, work / mode, args.max_shard_size)
            reports[mode].append(report)
            return report["seconds"]
        return once

    alternate({"export": side("export", checkpoint), "copy": side("copy", reference)}, repeats=args.repeats,
              warmup=0)
    shards = sorted(reference.glob("*.safetensors"))
    out_gb = sum(s.stat().st_size for s in shards) / GB
    largest = max(s.stat().st_size for s in shards) / GB
    export_s = median([r["seconds"] for r in reports["export"]])
    copy_s = median([r["seconds"] for r in reports["copy"]])
    peak = max(r["peak_rss_gb"] for r in reports["export"])
    baseline = median([r["baseline_rss_gb"] for r in reports["export"]])
    fields = {"gb_per_s": out_gb / export_s, "copy_gb_per_s": out_gb / copy_s, "ratio": copy_s / export_s,
              "peak_rss_gb": peak, "model_gb": model_gb, "output_gb": out_gb, "largest_shard_gb": largest,
              "shards": len(shards), "baseline_rss_gb": baseline,
              "copy_peak_rss_gb": max(r["peak_rss_gb"] for r in reports["copy"]),
              "rss_bound_gb": 1.5 * largest + 1.0,
              "export_seconds": [r["seconds"] for r in reports["export"]],
              "copy_seconds": [r["seconds"] for r in reports["copy"]],
              "max_shard_size": args.max_shard_size, "repeats": args.repeats,
              "targets": {"ratio": ">= 0.5", "peak_rss_gb": "<= 1.5 * largest_shard_gb + 1"}}
    rows = [("export_hf", fields["gb_per_s"], export_s, peak),
            ("safetensors copy", fields["copy_gb_per_s"], copy_s, fields["copy_peak_rss_gb"])]
    notes = [f"{model_gb:.2f} GB fp32 checkpoint -> {len(shards)} shard(s), largest {largest:.2f} GB; peak RSS "
             f"bound 1.5 x shard + 1 GB = {fields['rss_bound_gb']:.2f} GB (imports alone: {baseline:.2f} GB); "
             f"each run in a fresh child process, median of {args.repeats}"]
    return BenchResult("convert", fields, ("side", "gb_per_s", "seconds", "peak_rss_gb"), rows, notes)


if __name__ == "__main__":
    child(*sys.argv[1:5])
