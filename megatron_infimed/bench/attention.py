"""``infimed-bench attention``: packed attention (each sample attends only to itself) vs dense
causal attention over the whole pack, on one pack of ``seq_length`` slots from the length mix.

Both sides compute causal attention over the same Q, K, V; the packed side is our
``PackedDotProductAttention`` (per-segment SDPA on CPU, torch's varlen flash attention on CUDA in
bf16), the dense side one causal SDPA call over all ``L`` tokens, which is what a padded or
mask-free implementation pays. Work ratio: dense does L²/2 query-key pairs, packed Σ lᵢ²/2, so
``ideal_speedup = L² / Σ lᵢ²``; the target is ``speedup ≥ 0.7 × ideal_speedup``.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from megatron_infimed.bench.length_mix import draw_lengths
from megatron_infimed.bench.report import BenchResult
from megatron_infimed.bench.timing import alternate, median
from megatron_infimed.data.packing import OnlinePacker


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seq-length", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=None, help="query heads (default 4 on CPU, 16 on CUDA)")
    parser.add_argument("--query-groups", type=int, default=None, help="K/V heads (default heads / 2)")
    parser.add_argument("--head-dim", type=int, default=None, help="default 64 on CPU, 128 on CUDA")
    parser.add_argument("--backward", action="store_true", help="time forward + backward")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)


def pack_segments(seq_length: int, seed: int) -> list[int]:
    """A typical full pack: of the packs (≥ 99% full) the online packer makes from the mix, the one
    with the median ideal speedup (the first packs to leave are often one long sample)."""
    packer: OnlinePacker[int] = OnlinePacker(seq_length, 1024)
    packs = [p for n in draw_lengths(8192, seq_length, seed=seed) for p in packer.add(n, n)] + packer.flush()
    full = sorted((p for p in packs if sum(p) >= 0.99 * seq_length), key=ideal_speedup)
    if not full:
        raise ValueError(f"no pack of the length mix fills {seq_length} slots to 99%")
    return full[len(full) // 2]


def ideal_speedup(segments: list[int]) -> float:
    """L² / Σ lᵢ² (e.g. segments [2, 2] → 16 / 8 = 2.0)."""
    total = sum(segments)
    return total * total / sum(n * n for n in segments)


def packed_attention_module(heads: int, groups: int, head_dim: int):
    """Our core attention as the decoder builds it (one tensor-parallel rank, causal)."""
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from megatron_infimed.model.packed_attention import PackedDotProductAttention

    config = TransformerConfig(num_layers=1, hidden_size=heads * head_dim, num_attention_heads=heads,
                               num_query_groups=groups, kv_channels=head_dim, attention_dropout=0.0)
    one_rank = SimpleNamespace(tp=SimpleNamespace(size=lambda: 1))
    return PackedDotProductAttention(config, 1, AttnMaskType.causal, "self", pg_collection=one_rank)


def run(args: argparse.Namespace) -> BenchResult:
    from megatron_infimed.model.infimed import packed_seq_params

    cuda = torch.cuda.is_available()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    heads = args.heads or (16 if cuda else 4)
    groups = args.query_groups or max(1, heads // 2)
    head_dim = args.head_dim or (128 if cuda else 64)
    segments = pack_segments(args.seq_length, args.seed)
    total = sum(segments)
    g = torch.Generator().manual_seed(args.seed)
    q = torch.randn(total, heads, head_dim, generator=g).to(device, dtype).requires_grad_(args.backward)
    k = torch.randn(total, groups, head_dim, generator=g).to(device, dtype).requires_grad_(args.backward)
    v = torch.randn(total, groups, head_dim, generator=g).to(device, dtype).requires_grad_(args.backward)
    cu = torch.zeros(len(segments) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(segments), 0)
    params = packed_seq_params(cu.to(device), max(segments))
    module = packed_attention_module(heads, groups, head_dim)
    scale = head_dim ** -0.5

    def packed():
        out = module(q, k, v, None, packed_seq_params=params)
        if args.backward:
            out.float().sum().backward()

    def dense():
        # [1, heads, L, d]; GQA inside SDPA, as the packed side does.
        qd, kd, vd = (x.transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        out = F.scaled_dot_product_attention(qd, kd, vd, is_causal=True, scale=scale, enable_gqa=groups != heads)
        if args.backward:
            out.float().sum().backward()

    with torch.set_grad_enabled(args.backward):
        seconds = alternate({"packed": packed, "dense": dense}, repeats=args.repeats)
    packed_ms, dense_ms = median(seconds["packed"]) * 1e3, median(seconds["dense"]) * 1e3
    ideal = ideal_speedup(segments)
    fields = {"seq_length": args.seq_length, "tokens": total, "segments": len(segments), "segment_lengths": segments,
              "packed_ms": packed_ms, "dense_ms": dense_ms, "speedup": dense_ms / packed_ms,
              "ideal_speedup": ideal, "fraction_of_ideal": dense_ms / packed_ms / ideal,
              "heads": heads, "query_groups": groups, "head_dim": head_dim, "dtype": str(dtype).removeprefix("torch."),
              "backward": args.backward, "repeats": args.repeats,
              "targets": {"speedup": ">= 0.7 * ideal_speedup"}}
    rows = [("packed (per sample)", packed_ms, dense_ms / packed_ms), ("dense causal (whole pack)", dense_ms, 1.0)]
    notes = [f"one pack of {total} tokens in {len(segments)} samples; ideal speedup L²/Σlᵢ² = {ideal:.2f}; "
             f"{'forward + backward' if args.backward else 'forward'}, "
             f"{heads} heads / {groups} K/V heads × {head_dim}, "
             f"{fields['dtype']} on {device}, median of {args.repeats}"]
    return BenchResult("attention", fields, ("attention", "ms", "speedup"), rows, notes)
