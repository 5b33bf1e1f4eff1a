"""The Python half of ``tools/gpu_check.sh``: packed-attention correctness, a bf16 matrix rate and
the ``infimed-1.7b`` training throughput (tokens/s, TFLOP/s, MFU), appended to ``docs/benchmarks.md``.

    python -m megatron_infimed.bench.gpu_check --dry              # no GPU: CPU correctness of a tiny step
    python -m megatron_infimed.bench.gpu_check --layers 28 --append docs/benchmarks.md

MFU = model FLOPs per second (``training.flops.training_flops``, the one formula) / the bf16
matmul rate measured here first (8192³ products), not the datasheet peak: the figure says how much
of what this GPU actually sustains the training step uses. Target ≥ 45% (Megatron-LM reports
41-48% on H100 for GPT models of this class, with Transformer Engine; this run uses the local spec).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from megatron_infimed.bench.report import environment


def matmul_tflops(size: int = 8192, repeats: int = 10) -> float:
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


def packed_attention_error(device: str, dtype: torch.dtype) -> float:
    """Max |packed - per-sample reference| of our core attention on a 3-sample pack."""
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


def tiny_step_check() -> dict:
    """CPU (or GPU) correctness of one training step of the tiny preset on a mock pack."""
    from megatron_infimed.bench.train import ours_step
    from megatron_infimed.bench.workload import build_model
    from megatron_infimed.config.presets import get_preset
    from megatron_infimed.training.mock_data import mock_pack

    config = get_preset("tiny")
    model = build_model(config, seed=0)
    pack = mock_pack(config, 256, seed=0, index=0)
    if torch.cuda.is_available():
        for name in ("tokens", "labels", "loss_weights", "cu_seqlens", "position_ids", "images"):
            setattr(pack, name, getattr(pack, name).cuda())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    ours_step(model, optimizer, pack)
    changed = sum(not torch.equal(a, p.detach()) for a, p in zip(before, model.parameters()))
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    return {"samples_in_pack": len(pack.sample_ids), "parameters_updated": changed,
            "parameters": len(before), "finite": bool(finite)}


def throughput(layers: int, seq_length: int, steps: int) -> dict:
    """bf16 forward + backward + AdamW on ``infimed-1.7b`` (``layers`` decoder layers), packs of ``seq_length``."""
    from megatron_infimed.bench.length_mix import draw_samples
    from megatron_infimed.bench.train import ours_step
    from megatron_infimed.bench.workload import build_model
    from megatron_infimed.config.presets import get_preset
    from megatron_infimed.data.pack import Pack
    from megatron_infimed.data.packing import OnlinePacker
    from megatron_infimed.model.token_reduction import tokens_per_image
    from megatron_infimed.training.flops import training_flops

    config = get_preset("infimed-1.7b").with_overrides({"language.num_layers": layers})
    per_image = tokens_per_image(config)
    model = build_model(config, seed=0, dtype=torch.bfloat16)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, foreach=True)
    packer = OnlinePacker(seq_length, 1024)
    mixes = draw_samples(4096, seq_length, per_image, seed=0)
    groups = [g for m in mixes for g in packer.add(m, m.length(per_image))]
    groups = sorted(groups, key=lambda g: -sum(m.length(per_image) for m in g))[:steps + 2]
    g = torch.Generator().manual_seed(0)
    packs, flops = [], []
    size = config.vision.image_size
    for group in groups:
        ids, cu, images = [], [0], 0
        for m in group:
            text = torch.randint(0, 150000, (m.text_tokens,), generator=g)
            ids.append(torch.cat([torch.full((m.images * per_image,), config.image_token_id), text]))
            cu.append(cu[-1] + m.length(per_image))
            images += m.images
        tokens = torch.cat(ids)
        labels = torch.roll(tokens, -1).masked_fill(tokens == config.image_token_id, -100)
        cu_t = torch.tensor(cu, dtype=torch.int32)
        positions = torch.cat([torch.arange(n) for n in (cu_t[1:] - cu_t[:-1]).tolist()])
        pack = Pack(tokens=tokens.cuda(), labels=labels.cuda(), loss_weights=(labels >= 0).float().cuda(),
                    cu_seqlens=cu_t.cuda(), position_ids=positions.cuda(),
                    images=torch.rand(images, 3, size, size, generator=g).cuda(),
                    sample_ids=[str(i) for i in range(len(group))], images_per_sample=[m.images for m in group])
        packs.append(pack)
        flops.append(training_flops(config, (cu_t[1:] - cu_t[:-1]).tolist(), images))
    for pack in packs[:2]:  # warm-up: allocator, kernel selection
        ours_step(model, optimizer, pack)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for pack in packs[2:]:
        ours_step(model, optimizer, pack)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens = sum(p.num_tokens for p in packs[2:])
    return {"layers": layers, "seq_length": seq_length, "steps": len(packs) - 2, "tokens_per_s": tokens / seconds,
            "tflops": sum(flops[2:]) / seconds / 1e12, "step_s": seconds / (len(packs) - 2),
            "fill": tokens / ((len(packs) - 2) * seq_length),
            "peak_memory_gb": torch.cuda.max_memory_allocated() / 1e9}


def append_results(path: Path, result: dict) -> None:
    env = result["environment"]
    t = result["throughput"]
    lines = [
        "", f"### GPU check, {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, {env['device']}", "",
        f"torch {env['torch']}, megatron-core {env['megatron_core']}, Python {env['python']}; "
        f"`tools/gpu_check.sh` (local spec, no Transformer Engine).", "",
        "| measure | value |", "|---|---|",
        f"| bf16 matmul 8192³ (measured) | {result['matmul_tflops']:.0f} TFLOP/s |",
        f"| packed attention max error vs per-sample reference (bf16) | {result['attention_error']:.2e} |",
        f"| infimed-1.7b, {t['layers']} layers, packs of {t['seq_length']}: tokens/s | {t['tokens_per_s']:,.0f} |",
        f"| model TFLOP/s | {t['tflops']:.1f} |",
        f"| MFU vs measured matmul rate (target ≥ 45%) | {result['mfu']:.1%} |",
        f"| step time / peak memory | {t['step_s']:.3f} s / {t['peak_memory_gb']:.1f} GB |", "",
    ]
    with path.open("a") as f:
        f.write("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry", action="store_true", help="no GPU: CPU correctness of a tiny step only")
    parser.add_argument("--layers", type=int, default=28, help="decoder layers of infimed-1.7b (28 = full)")
    parser.add_argument("--seq-length", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--append", default=None, help="markdown file to append the results to")
    args = parser.parse_args(argv)
    if args.layers < 1 or args.seq_length < 512 or args.steps < 1:
        parser.error(f"need --layers >= 1, --seq-length >= 512, --steps >= 1; got {args.layers}, "
                     f"{args.seq_length}, {args.steps}")
    cuda = torch.cuda.is_available() and not args.dry  # --dry checks the CPU path even on a GPU machine
    if not args.dry and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry (tools/gpu_check.sh does this by itself)")
    result = {"mode": "dry" if args.dry else "gpu", "environment": environment()}
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    result["attention_error"] = packed_attention_error(device, dtype)
    result["tiny_step"] = tiny_step_check()
    ok = result["attention_error"] < (3e-2 if cuda else 1e-4) and result["tiny_step"]["finite"] \
        and result["tiny_step"]["parameters_updated"] == result["tiny_step"]["parameters"]
    if not args.dry:
        result["matmul_tflops"] = matmul_tflops()
        result["throughput"] = throughput(args.layers, args.seq_length, args.steps)
        result["mfu"] = result["throughput"]["tflops"] / result["matmul_tflops"]
        if args.append:
            append_results(Path(args.append), result)
    result["correct"] = bool(ok)
    print(json.dumps(result))
    if not ok:
        raise SystemExit(f"gpu check: correctness failed: {result}")


if __name__ == "__main__":
    main()
