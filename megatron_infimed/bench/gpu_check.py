"""The Python half of ``tools/gpu_check.sh``: an import preflight, packed-attention correctness, a bf16
matmul rate, and the figures of a real ``infimed-train`` run read from its ``metrics.jsonl``.

    python -m megatron_infimed.bench.gpu_check --preflight            # names each missing module, exit 2
    python -m megatron_infimed.bench.gpu_check --run-dir RUN --warmup 2 --append docs/benchmarks.md
    python -m megatron_infimed.bench.gpu_check --dry --run-dir RUN    # CPU: no matmul rate

The throughput is the training loop's own: the script runs ``infimed-train`` on mock data and this
module reads what the loop logged (``tokens_per_s``, ``tflops_per_gpu``, ``mfu``) over the
iterations after the warm-up, so the check measures what a user's run measures. MFU is the loop's:
useful model FLOPs per second (``training.flops``) over the GPU's dense bf16 peak
(``training.metrics.peak_tflops``: NVIDIA's figure, or ``--peak-tflops``), the denominator of
Megatron-LM's reported 41-48% on H100. The measured rate of one 8192³ bf16 product stands beside
it: what this GPU sustains at best (on an H200 about 790 of its 989).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path

# What the package and the check import at run time, with the wheel that provides each: setup.py's
# install_requires, megatron-core's and webdataset's own needs, and pytest for the CUDA tests.
REQUIRED_MODULES = {
    "torch": "torch", "numpy": "numpy", "packaging": "packaging", "PIL": "pillow", "yaml": "pyyaml",
    "tqdm": "tqdm", "psutil": "psutil", "pytest": "pytest", "megatron.core": "megatron-core",
    "sentencepiece": "sentencepiece", "tokenizers": "tokenizers", "webdataset": "webdataset",
    "braceexpand": "braceexpand", "safetensors": "safetensors", "matplotlib": "matplotlib",
    "transformers": "transformers",
}
# Importing these pulls in everything the training run and this check import at module level, so a
# need missing from the list above still shows up before the long steps.
ENTRY_MODULES = ("megatron_infimed.training.loop", "megatron_infimed.bench.attention")


def missing_modules(required: dict[str, str] = REQUIRED_MODULES,
                    entry: tuple[str, ...] = ENTRY_MODULES) -> list[str]:
    """One line per module that does not import, naming the wheel to carry; empty when all do."""
    problems, missing = [], set()
    for module, wheel in required.items():
        try:
            importlib.import_module(module)
        except ImportError as error:
            missing.add(module.split(".")[0])
            problems.append(f"missing module {module} (carry the wheel {wheel}): {error}")
    for module in entry:
        try:
            importlib.import_module(module)
        except ImportError as error:
            name = getattr(error, "name", None) or "?"
            if name.split(".")[0] not in missing:  # already named above
                problems.append(f"importing {module} failed on module {name}: {error}")
    return problems


def matmul_tflops(size: int = 8192, repeats: int = 10) -> float:
    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e12


def packed_attention_error(device: str, dtype) -> float:
    """Max |packed - per-sample reference| of our core attention on a 3-sample pack."""
    import torch

    from megatron_infimed.bench.attention import packed_attention_module
    from megatron_infimed.model.infimed import packed_seq_params
    from megatron_infimed.model.packed_attention import attention_per_segment

    segments = [37, 300, 175]
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(sum(segments), h, 64, generator=g).to(device, dtype) for h in (8, 4, 4))
    cu = torch.tensor([0, 37, 337, 512], dtype=torch.int32, device=device)
    out = packed_attention_module(8, 4, 64)(q, k, v, None, packed_seq_params=packed_seq_params(cu, 300))
    reference = attention_per_segment(q.float(), k.float(), v.float(), cu, True, 64 ** -0.5)
    return float((out.float().view_as(reference) - reference).abs().max())


def training_figures(run_dir: Path, warmup: int) -> dict:
    """The loop's figures over the iterations after ``warmup``: totals over their step time, so a
    slow step weighs as much as it cost. ``mfu`` is null when the run had no peak (a CPU)."""
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    timed = [r for r in records if r["iteration"] > warmup]
    counts = {"iterations": len(records), "timed_iterations": len(timed),
              "losses_finite": bool(records) and all(math.isfinite(r["loss"]) for r in records)}
    if not timed:
        return counts
    seconds = sum(r["step_time_s"] for r in timed)
    mfu = None if any(r["mfu"] is None for r in timed) else sum(r["mfu"] * r["step_time_s"] for r in timed) / seconds
    return {
        **counts, "tokens_per_s": sum(r["tokens"] for r in timed) / seconds,
        "tflops_per_gpu": sum(r["tflops_per_gpu"] * r["step_time_s"] for r in timed) / seconds, "mfu": mfu,
        "step_time_s": seconds / len(timed), "fill_ratio": sum(r["fill_ratio"] for r in timed) / len(timed),
        "first_loss": records[0]["loss"], "last_loss": records[-1]["loss"],
    }


def _last_line(path: str | None) -> str | None:
    if not path or not Path(path).is_file():
        return None
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:300] if lines else None


def append_results(path: Path, result: dict) -> None:
    env, t = result["environment"], result["training"]
    title = "GPU check" if result["mode"] == "gpu" else "GPU check, dry path (CPU)"

    def figure(key: str, fmt: str) -> str:
        return format(t[key], fmt) if t.get(key) is not None else "—"

    matmul = f"{result['matmul_tflops']:.0f} TFLOP/s" if result.get("matmul_tflops") else "—"
    peak = f"{result['peak_tflops']:.0f} TFLOP/s" if result.get("peak_tflops") else "none (no MFU)"
    mfu = f"{t['mfu']:.1%}" if t.get("mfu") is not None else "—"
    lines = [
        "", f"### {title}, {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, {env['device']}", "",
        f"torch {env['torch']}, megatron-core {env['megatron_core']}, Python {env['python']}; "
        f"`tools/gpu_check.sh` (local spec, no Transformer Engine).", "",
        f"`{result['train_command']}`", "",
        "| measure | value |", "|---|---|",
        f"| training run | exit {result['train_exit_code']}, {t['timed_iterations']} timed of {t['iterations']} "
        f"iterations{'' if result['train_exit_code'] == 0 else ': ' + str(result['train_error'])} |",
        f"| tokens/s (real tokens) | {figure('tokens_per_s', ',.0f')} |",
        f"| model TFLOP/s per GPU (useful FLOPs) | {figure('tflops_per_gpu', '.4g')} |",
        f"| MFU vs the dense bf16 peak, {peak} (target ≥ 45%) | {mfu} |",
        f"| bf16 matmul 8192³, measured | {matmul} |",
        f"| step time / fill | {figure('step_time_s', '.3f')} s / {figure('fill_ratio', '.3f')} |",
        f"| packed attention max error vs per-sample reference | {result['attention_error']:.2e} |", "",
    ]
    with path.open("a") as f:
        f.write("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preflight", action="store_true", help="only check that every needed module imports")
    parser.add_argument("--dry", action="store_true", help="the CPU path: fp32 attention check, no matmul rate")
    parser.add_argument("--run-dir", type=Path, help="the infimed-train run folder (its metrics.jsonl)")
    parser.add_argument("--warmup", type=int, default=2, help="first iterations left out of the figures")
    parser.add_argument("--steps", type=int, default=1, help="timed iterations the run must have recorded")
    parser.add_argument("--train-command", default="", help="the training command, as it is to be recorded")
    parser.add_argument("--train-exit-code", type=int, default=0, help="how the training run ended")
    parser.add_argument("--train-log", default=None, help="its output; a failed run's last line is recorded")
    parser.add_argument("--peak-tflops", type=float, default=None, help="as given to infimed-train")
    parser.add_argument("--append", default=None, help="markdown file to append the results to")
    args = parser.parse_args(argv)
    if args.preflight:
        problems = missing_modules()
        for line in problems:
            print(f"gpu_check: {line}")
        if problems:
            raise SystemExit(2)
        print(f"gpu_check: preflight: all {len(REQUIRED_MODULES)} modules and the package's entry points import")
        return
    if args.run_dir is None:
        parser.error("--run-dir is required (the infimed-train run to read)")

    import torch

    from megatron_infimed.bench.report import environment
    from megatron_infimed.training.metrics import peak_tflops

    cuda = not args.dry
    if cuda and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry (tools/gpu_check.sh does this by itself)")
    result = {"mode": "gpu" if cuda else "dry", "environment": environment(), "train_command": args.train_command,
              "train_exit_code": args.train_exit_code,
              "train_error": _last_line(args.train_log) if args.train_exit_code else None}
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    result["attention_error"] = packed_attention_error(device, dtype)
    result["peak_tflops"] = peak_tflops(args.peak_tflops)
    if cuda:
        result["matmul_tflops"] = matmul_tflops()
    result["training"] = training_figures(args.run_dir, args.warmup)
    t = result["training"]
    result["correct"] = bool(result["attention_error"] < (3e-2 if cuda else 1e-4) and args.train_exit_code == 0
                             and t["timed_iterations"] >= args.steps and t["losses_finite"])
    if args.append:
        append_results(Path(args.append), result)
    print(json.dumps(result))
    if not result["correct"]:
        raise SystemExit(f"gpu check: a check failed: {json.dumps(result)}")


if __name__ == "__main__":
    main()
